"""The index stage: one FAISS index per embedding space and a BM25 index, refreshed incrementally.

`embeddings/text` becomes `indexes/text`, `embeddings/image` becomes `indexes/image`, and the
documents' texts become `indexes/bm25`. The unit of work is an index. An index that already
holds exactly the current vectors publishes nothing; new vectors go into a new segment; a
large build runs as a Ray task (index.task), so the flow process never holds the vectors.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.index.lexical import BM25_NAME, LexicalIndex, lexical_texts, texts_hash
from tasks.index.refresh import refresh_vector_index
from tasks.index.store import dataset_name, input_index
from tasks.index.vector import Vectors
from tasks.runtime.stage import KEY, UNIT, Assembled, Read, Stage, Units, optional

log = logging.getLogger(__name__)

SPACES = ("embeddings/text", "embeddings/image")


class Index(Stage):
    name = "index"
    section = "index"
    runs_as_task = True
    reads = (optional("embeddings/text"), optional("embeddings/image"), Read("documents"), optional("captions"))
    writes = ("indexes/text", "indexes/image", "indexes/bm25")
    incremental = True
    description = "FAISS index per embedding space (type by size and memory budget, refreshed by segments) and BM25"

    def task_size(self, inputs, units: pa.Table) -> int:
        sizes = [ref.row_count for ref in (inputs.ref(s) for s in SPACES + ("documents",)) if ref is not None]
        return max(sizes, default=0)

    def units(self, inputs) -> Units:
        names = [dataset_name(s.split("/", 1)[1]) for s in SPACES if s in inputs]
        if self.cfg.bm25:
            names.append(dataset_name(BM25_NAME))
        return Units(pa.table({UNIT: pa.array(names, pa.string()), KEY: pa.array(names, pa.string())}))

    def assemble(self, inputs, units: pa.Table, results) -> Assembled:
        tables, summary = {}, {}
        for space in SPACES:
            if space not in inputs:
                continue
            name = space.split("/", 1)[1]
            out, summary[name] = self._vector(inputs, space, name)
            if out is not None:
                tables[dataset_name(name)] = out
        if self.cfg.bm25:
            out, summary[BM25_NAME] = self._lexical(inputs)
            if out is not None:
                tables[dataset_name(BM25_NAME)] = out
        return Assembled(tables, units[UNIT].to_pylist(), notes=summary)

    def _vector(self, inputs, space: str, name: str):
        ref = inputs.ref(space)
        vecs = Vectors.from_dataset(inputs.dataset(space)) if ref is not None and inputs.stored \
            else Vectors.from_table(inputs[space])
        previous = input_index(inputs, dataset_name(name), previous=True)
        encoder = self.config.embed.text.model_dump(mode="json") if name == "text" else None
        source = {"dataset": space, "version": ref.version if ref else None, "encoder": encoder}
        res = refresh_vector_index(name, vecs, previous, self.cfg, source)
        note = {"action": res.action, "type": res.index.type if res.index.segments else None,
                "count": res.index.count, "segments": len(res.index.segments), "added": res.added,
                "removed": res.removed, "reason": res.reason}
        log.info("index %s: %s (%s, %d vectors in %d segments%s)", name, res.action, note["type"], res.index.count,
                 note["segments"], f"; {res.reason}" if res.reason else "")
        if res.action == "unchanged":
            return None, note
        if res.action == "built":
            return res.index.to_output("built"), note
        deleted = _rowaddrs(inputs.previous_dataset(dataset_name(name)), res.removed_positions) \
            if len(res.removed_positions) else []
        return res.index.to_output("added", added=res.new_rows, deleted=deleted), note

    def _lexical(self, inputs):
        texts = lexical_texts(inputs["documents"], inputs.get("captions"))
        prev_ref = inputs.previous_ref(dataset_name(BM25_NAME))
        digest = texts_hash(texts)
        if prev_ref is not None and inputs.meta(prev_ref).get("content_hash") == digest:
            return None, {"action": "unchanged", "count": prev_ref.row_count}
        docs = inputs.ref("documents")
        lex = LexicalIndex.build(texts, self.cfg, {"dataset": "documents", "version": docs.version if docs else None})
        return lex.to_output(), {"action": "built", "count": len(lex.docs)}

    def report(self, outcome) -> None:
        from tasks.runtime.prefect_support import run_logger

        memory = outcome.memory or {}
        for name, s in outcome.notes.items():
            run_logger().info("index %s: %s (%s, %d)", name, s["action"], s.get("type") or "bm25", s["count"])
        if memory.get("peak_mb") is not None:
            run_logger().info("index: built in the %s, peak memory %.0f MB", memory["where"], memory["peak_mb"])


def _rowaddrs(ds, positions: np.ndarray) -> list[int]:
    """Row addresses of id-map rows by FAISS position (for the deletion files of the next version)."""
    wanted = pa.array(np.asarray(positions, np.int64), pa.int64())
    out = []
    for batch in ds.scanner(columns=["position"], with_row_address=True, batch_size=65_536).to_batches():
        hit = pc.is_in(batch["position"], value_set=wanted)
        out += batch["_rowaddr"].filter(hit).to_pylist()
    return out
