"""The index stage: one FAISS index per embedding space and a BM25 index, refreshed incrementally.

`embeddings/text` becomes `indexes/text`, `embeddings/image` becomes `indexes/image`, and the
documents' texts become `indexes/bm25`. An index that already holds exactly the current vectors
publishes nothing; new vectors are added without a rebuild when the type allows it.
"""
from __future__ import annotations

import logging

import pyarrow as pa

from schemas.config import IndexConfig
from tasks.index.lexical import BM25_NAME, LexicalIndex, lexical_texts, texts_hash
from tasks.index.store import IndexStore, dataset_name
from tasks.index.vector import ITEM_COLUMNS, Vectors, _indexable_mask, refresh_vector_index
from tasks.runtime.stage import KEY, UNIT, Assembled, Read, Stage, Units, optional

log = logging.getLogger(__name__)

SPACES = ("embeddings/text", "embeddings/image")


class Index(Stage):
    name = "index"
    section = "index"
    reads = (optional("embeddings/text"), optional("embeddings/image"), Read("documents"), optional("captions"))
    writes = ("indexes/text", "indexes/image", "indexes/bm25")
    incremental = True
    description = "FAISS index per embedding space (type by size and memory budget) and BM25"

    @property
    def cfg(self) -> IndexConfig:
        return self.config.index

    def units(self, inputs) -> Units:
        parts = []
        for space in SPACES:
            items = _items(inputs, space)
            if items is None or items.num_rows == 0:
                continue
            ids = [f"{space}:{k}:{i}" for k, i in zip(items["item_kind"].to_pylist(), items["item_id"].to_pylist())]
            parts.append(pa.table({UNIT: pa.array(ids, pa.string()), KEY: pa.array(ids, pa.string())}))
        if self.cfg.bm25:
            docs = inputs["documents"]
            ids = [f"bm25:{d}" for d in docs["doc_id"].to_pylist()]
            parts.append(pa.table({UNIT: pa.array(ids, pa.string()), KEY: pa.array(ids, pa.string())}))
        schema = pa.schema([(UNIT, pa.string()), (KEY, pa.string())])
        return Units(pa.concat_tables(parts) if parts else schema.empty_table())

    def assemble(self, inputs, units: pa.Table, results) -> Assembled:
        tables, summary = {}, {}
        store = IndexStore(inputs.run.catalog, inputs.run.root) if inputs.run else None
        for space in SPACES:
            if space not in inputs:
                continue
            name = space.split("/", 1)[1]
            ref = inputs.ref(space)
            vecs = (Vectors.from_dataset(inputs.dataset(space)) if ref is not None and inputs.run
                    else Vectors.from_table(inputs[space]))  # streamed from its shards: never two copies
            prev_ref = inputs.previous_ref(dataset_name(name))
            previous = store.load_vector(name, prev_ref) if (store and prev_ref) else None
            encoder = self.config.embed.text.model_dump(mode="json") if name == "text" else None
            source = {"dataset": space, "version": ref.version if ref else None, "encoder": encoder}
            res = refresh_vector_index(name, vecs, previous, self.cfg, source)
            summary[name] = {"action": res.action, "type": res.index.type, "count": res.index.count,
                             "added": res.added, "reason": res.reason}
            if res.action != "unchanged":
                tables[dataset_name(name)] = res.index.to_output(res.action)
            log.info("index %s: %s (%s, %d vectors%s)", name, res.action, res.index.type, res.index.count,
                     f"; {res.reason}" if res.reason else "")
        if self.cfg.bm25:
            texts = lexical_texts(inputs["documents"], inputs.get("captions"))
            prev_ref = inputs.previous_ref(dataset_name(BM25_NAME))
            digest = texts_hash(texts)
            if prev_ref is not None and inputs.meta(prev_ref).get("content_hash") == digest:
                summary[BM25_NAME] = {"action": "unchanged", "count": prev_ref.row_count}
            else:
                docs = inputs.ref("documents")
                lex = LexicalIndex.build(texts, self.cfg, {"dataset": "documents",
                                                           "version": docs.version if docs else None})
                tables[dataset_name(BM25_NAME)] = lex.to_output()
                summary[BM25_NAME] = {"action": "built", "count": len(lex.docs)}
        return Assembled(tables, units[UNIT].to_pylist(), notes=summary)

    def report(self, outcome) -> None:
        from tasks.runtime.prefect_support import run_logger

        for name, s in outcome.notes.items():
            run_logger().info("index %s: %s (%s, %d)", name, s["action"], s.get("type", "bm25"), s["count"])


def _items(inputs, space: str) -> pa.Table | None:
    """The indexable rows of an embeddings dataset (id columns only)."""
    if space not in inputs:
        return None
    if inputs.ref(space) is not None and inputs.run is not None:
        table = inputs.dataset(space).to_table(columns=ITEM_COLUMNS)
    else:
        table = inputs[space].select(ITEM_COLUMNS)
    keep = _indexable_mask(table)
    return table.filter(pa.array(keep)) if keep is not None else table
