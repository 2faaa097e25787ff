"""A vector index with its id map, the vectors it is built from, and its incremental refresh.

Row i of the id map (item_id, item_kind, doc_id, content_sha256) is FAISS id i. On refresh new
vectors are added to the current index instead of rebuilding it, unless the chosen type
changes, vectors were removed, or a trained index (IVF/PQ) outgrew its training.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import IndexConfig
from schemas.tables import INDEX_ITEMS
from tasks.index.plan import METRIC, build_faiss, empty_faiss, faiss_version, plan_index
from tasks.runtime.catalog import now
from tasks.runtime.stage import Output
from tasks.runtime.tables import vectors as vectors_of

INDEXED_KINDS = ("document", "caption", "image")  # vectors that stand for a document
ITEM_COLUMNS = ["item_id", "item_kind", "doc_id", "content_sha256"]


@dataclass
class VectorIndex:
    """A FAISS index over item vectors; items[i] (item_id, item_kind, doc_id, content_sha256) is FAISS id i.

    A document may have several vectors (its text and its captions): document-level search keeps
    each document's best item, so a document scores as its best-matching representation.
    """

    name: str
    index: object
    items: pa.Table
    manifest: dict
    docs: np.ndarray = field(init=False)  # doc ids, first appearance order
    item_doc: np.ndarray = field(init=False)  # item row -> position in docs

    def __post_init__(self) -> None:
        self._map_docs()

    def _map_docs(self) -> None:
        doc_ids = self.items["doc_id"].to_numpy(zero_copy_only=False).astype(object)
        uniq, first, inv = np.unique(doc_ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        self.docs = uniq[order]
        self.item_doc = rank[inv].astype(np.int64)
        counts = np.bincount(self.item_doc, minlength=len(self.docs)) if len(self.docs) else np.zeros(0, int)
        self.max_items_per_doc = int(counts.max()) if len(counts) else 1
        self._doc_pos = {d: i for i, d in enumerate(self.docs)}
        self._doc_items: list[np.ndarray] | None = None

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def type(self) -> str:
        return self.manifest["type"]

    def doc_position(self, doc_ids) -> np.ndarray:
        """Positions of doc ids in `docs`; -1 for documents without a vector here."""
        return np.array([self._doc_pos.get(d, -1) for d in doc_ids], dtype=np.int64)

    # -- search --
    def search_items(self, queries: np.ndarray, k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Batched top-k over items: (scores, faiss ids), -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.count))
        scores = np.empty((len(queries), k), np.float32)
        ids = np.empty((len(queries), k), np.int64)
        for i in range(0, len(queries), batch):
            s, d = self.index.search(queries[i:i + batch], k)
            scores[i:i + batch], ids[i:i + batch] = s, d
        return scores, ids

    def search_docs(self, queries: np.ndarray, k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents per query: (scores [B,k], doc positions [B,k]), padded with -inf / -1."""
        B = len(queries)
        out_s = np.full((B, k), -np.inf, np.float32)
        out_d = np.full((B, k), -1, np.int64)
        if self.count == 0 or B == 0:
            return out_s, out_d
        fetch = min(self.count, k * self.max_items_per_doc)
        s, ids = self.search_items(queries, fetch, batch)
        valid = ids >= 0
        doc = np.where(valid, self.item_doc[np.where(valid, ids, 0)], -1)
        if self.max_items_per_doc == 1:
            n = min(k, doc.shape[1])
            out_s[:, :n] = np.where(valid[:, :n], s[:, :n], -np.inf)
            out_d[:, :n] = doc[:, :n]
            return out_s, out_d
        for r in range(B):  # keep each document's best item, in score order
            row = doc[r][valid[r]]
            _, first = np.unique(row, return_index=True)
            first = np.sort(first)[:k]
            out_s[r, :len(first)] = s[r][valid[r]][first]
            out_d[r, :len(first)] = row[first]
        return out_s, out_d

    def doc_scores(self, queries: np.ndarray, doc_positions: list[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of given documents for each query (a document scores as its best item)."""
        if self._doc_items is None:
            order = np.argsort(self.item_doc, kind="stable")
            bounds = np.searchsorted(self.item_doc[order], np.arange(len(self.docs) + 1))
            self._doc_items = [order[bounds[i]:bounds[i + 1]] for i in range(len(self.docs))]
        out = []
        for q, docs in zip(queries, doc_positions):
            docs = np.asarray(docs, np.int64)
            if len(docs) == 0:
                out.append(np.zeros(0, np.float32))
                continue
            items = [self._doc_items[d] if d >= 0 else np.zeros(0, np.int64) for d in docs]
            flat = np.concatenate(items) if items else np.zeros(0, np.int64)
            vecs = self.index.reconstruct_batch(flat) if len(flat) else np.zeros((0, self.dim), np.float32)
            sims = vecs @ np.asarray(q, np.float32)
            scores, pos = np.full(len(docs), -np.inf, np.float32), 0
            for i, it in enumerate(items):
                if len(it):
                    scores[i] = sims[pos:pos + len(it)].max()
                pos += len(it)
            out.append(scores)
        return out

    # -- storage: the id map is the version's table, the FAISS file its attachment --
    def to_output(self, action: str) -> Output:
        import faiss

        path = os.path.join(tempfile.mkdtemp(prefix="corpusforge-index-"), "index.faiss")
        faiss.write_index(self.index, path)
        items = self.items.select(ITEM_COLUMNS)
        table = items.add_column(0, "position", pa.array(np.arange(items.num_rows), pa.int64())).cast(INDEX_ITEMS)
        m = self.manifest
        meta = m | {"kind": "faiss", "action": action}
        identity = {k: m.get(k) for k in ("type", "factory", "params", "space", "dim", "metric")}
        return Output(table, {"index.faiss": path}, meta, identity)

    @classmethod
    def from_files(cls, items: pa.Table, manifest: dict, faiss_path: str) -> "VectorIndex":
        import faiss

        from tasks.index.plan import search_params

        index = faiss.read_index(faiss_path)
        search_params(index, manifest["type"], manifest["params"])
        return cls(manifest["name"], index, items.sort_by("position").select(ITEM_COLUMNS), manifest)

    # -- refresh --
    def add(self, items: pa.Table, vectors: np.ndarray) -> None:
        """Append vectors (and their id-map rows) without rebuilding."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.items = pa.concat_tables([self.items, items.select(self.items.column_names).cast(self.items.schema)])
        self._map_docs()
        self.manifest.update(count=self.count, docs=len(self.docs), max_items_per_doc=self.max_items_per_doc)


@dataclass
class Vectors:
    """The indexable rows of an embeddings dataset (document, caption and image vectors, not queries
    or tree summaries) and their vectors, streamed in row order so a large space is never held in
    memory twice on its way into FAISS."""

    items: pa.Table  # ITEM_COLUMNS + space
    dim: int
    stream: Callable[[], Iterator[np.ndarray]]

    def batches(self) -> Iterator[np.ndarray]:
        return self.stream()

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of the given row positions (ascending), gathered batch by batch."""
        out, start, done = np.empty((len(rows), self.dim), np.float32), 0, 0
        for b in self.batches():
            lo, hi = np.searchsorted(rows, [start, start + len(b)])
            out[done:done + hi - lo] = b[rows[lo:hi] - start]
            done += hi - lo
            start += len(b)
        return out

    @classmethod
    def from_table(cls, table: pa.Table, batch_rows: int = 65536) -> "Vectors":
        keep = _indexable_mask(table)
        vectors = vectors_of(table)
        items = table.select(ITEM_COLUMNS + ["space"])
        if keep is not None:
            items, vectors = items.filter(pa.array(keep)), vectors[keep]
        dim = vectors.shape[1] if len(vectors) else 0
        return cls(items, dim, lambda: (vectors[i:i + batch_rows] for i in range(0, len(vectors), batch_rows)))

    @classmethod
    def from_dataset(cls, ds, batch_rows: int = 16384) -> "Vectors":
        """The indexable vectors of an embeddings version (a Lance dataset), streamed shard by
        shard: the id columns are read once, the vectors as they go into FAISS."""
        filt = "item_kind IN ('document', 'caption', 'image') AND doc_id IS NOT NULL"
        items = ds.to_table(columns=ITEM_COLUMNS + ["space"], filter=filt)
        vtype = ds.schema.field("vector").type
        dim = vtype.list_size if pa.types.is_fixed_size_list(vtype) else 0

        def stream() -> Iterator[np.ndarray]:
            for batch in ds.scanner(columns=["vector"], filter=filt, batch_size=batch_rows).to_batches():
                yield np.ascontiguousarray(vectors_of(pa.table({"vector": batch.column(0)})))

        return cls(items, dim, stream)


def _indexable_mask(table: pa.Table) -> np.ndarray | None:
    """Rows that stand for a document; None when all of them do."""
    if table.num_rows == 0:
        return None
    keep = pc.and_(pc.is_in(table["item_kind"], value_set=pa.array(INDEXED_KINDS)),
                   pc.fill_null(pc.is_valid(table["doc_id"]), False))
    return None if pc.all(keep).as_py() else keep.to_numpy(zero_copy_only=False).astype(bool)


@dataclass
class RefreshResult:
    index: VectorIndex
    action: str  # built | added | unchanged
    added: int = 0
    removed: int = 0
    reason: str = ""


def refresh_vector_index(name: str, embeddings: pa.Table | Vectors, previous: VectorIndex | None, cfg: IndexConfig,
                         source: dict | None = None) -> RefreshResult:
    """Bring an index up to date with an embeddings table: add new vectors where the type allows.

    A rebuild happens when there is no index yet, the space or dimension changed, vectors were
    removed or changed, the planned type for the new size differs, or an IVF/PQ index grew past
    `retrain_growth` times the count it was trained on.
    """
    vecs = embeddings if isinstance(embeddings, Vectors) else Vectors.from_table(embeddings)
    rows, dim = vecs.items, vecs.dim
    key_now = _item_keys(rows)
    spaces = pc.unique(rows["space"]).to_pylist() if rows.num_rows else []
    if len(spaces) > 1:
        raise ValueError(f"embeddings for index '{name}' mix spaces {spaces}; one index holds one space")
    space = spaces[0] if spaces else None
    plan = plan_index(rows.num_rows, dim, cfg)

    reason = ""
    if previous is None:
        reason = "no index yet"
    elif previous.manifest.get("space") != space or previous.dim != dim:
        reason = f"space or dimension changed ({previous.manifest.get('space')}/{previous.dim} -> {space}/{dim})"
    else:
        key_prev = _item_keys(previous.items)
        removed = key_prev - key_now
        if removed:
            reason = f"{len(removed)} vectors removed or changed"
        elif plan.type != previous.type:
            reason = f"corpus size {rows.num_rows} now calls for {plan.type} instead of {previous.type}"
        elif previous.type.startswith("ivf") and rows.num_rows > cfg.retrain_growth * previous.manifest["trained_count"]:
            reason = f"{previous.type} trained on {previous.manifest['trained_count']} vectors, now {rows.num_rows}"
        else:
            new_mask = np.array([k not in key_prev for k in _item_key_list(rows)], bool)
            if not new_mask.any():
                return RefreshResult(previous, "unchanged")
            new_rows = rows.filter(pa.array(new_mask))
            previous.add(new_rows.select(ITEM_COLUMNS), vecs.take(np.flatnonzero(new_mask)))
            previous.manifest.update(source=source, updated_at=str(now()),
                                     added_since_build=previous.manifest.get("added_since_build", 0) + int(new_mask.sum()))
            return RefreshResult(previous, "added", added=int(new_mask.sum()))

    index = build_faiss(vecs, plan) if rows.num_rows else empty_faiss(dim)
    manifest = {
        "name": name, "space": space, "dim": dim, "metric": METRIC, "type": plan.type, "factory": plan.factory,
        "params": plan.params, "estimated_mb": round(plan.est_mb, 3), "memory_budget_mb": cfg.memory_budget_mb,
        "count": rows.num_rows, "trained_count": rows.num_rows, "added_since_build": 0,
        "built_at": str(now()), "source": source, "faiss": faiss_version(),
    }
    vi = VectorIndex(name, index, rows.select(ITEM_COLUMNS), manifest)
    manifest.update(docs=len(vi.docs), max_items_per_doc=vi.max_items_per_doc)
    return RefreshResult(vi, "built", added=rows.num_rows, reason=reason)


def _item_key_list(rows: pa.Table) -> list[tuple[str, str, str]]:
    return list(zip(rows["item_kind"].to_pylist(), rows["item_id"].to_pylist(), rows["content_sha256"].to_pylist()))


def _item_keys(rows: pa.Table) -> set[tuple[str, str, str]]:
    return set(_item_key_list(rows))
