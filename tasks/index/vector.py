"""A vector index as segments: FAISS files that a refresh adds to and never rewrites.

An index version is its id map (the dataset `indexes/<name>`: one row per live vector, whose
`position` is its global FAISS id) plus segment files. Segment s holds the ids
[first_id, first_id + count); a refresh adds one segment for the new vectors and deletes the
removed vectors' rows from the id map, so they are masked at search time (an IDSelector) until
a compaction rebuilds. A search runs on every segment and merges the top-k, which for a flat
index is exactly the search of one index over the same vectors.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import INDEX_ITEMS
from tasks.index.plan import search_params
from tasks.runtime.stage import Output
from tasks.runtime.tables import vectors as vectors_of

INDEXED_KINDS = ("document", "caption", "image")  # vectors that stand for a document
ITEM_COLUMNS = ["item_id", "item_kind", "doc_id", "content_sha256"]


@dataclass
class Segment:
    """One FAISS file of an index: local id i is global id first_id + i. A stored segment is read
    on first use, so a refresh that only adds a segment never loads the vectors it already has."""

    loaded: object  # the FAISS index, or None until `load` reads it
    first_id: int
    file: str  # file name
    dir: str | None = None  # data-root-relative folder; None: stored with the version being written
    local: str | None = None  # a local copy (to upload with the version)
    stored_count: int | None = None  # vectors in the file (from the manifest), while not loaded
    load: Callable[[], object] | None = None

    @property
    def index(self):
        if self.loaded is None:
            self.loaded = self.load()
        return self.loaded

    @property
    def count(self) -> int:
        return int(self.loaded.ntotal) if self.loaded is not None else int(self.stored_count)

    def entry(self) -> dict:
        return {"file": self.file, "dir": self.dir, "first_id": self.first_id, "count": self.count}


@dataclass
class VectorIndex:
    """FAISS segments and the id map of their live vectors (ITEM_COLUMNS + position, by position).

    A document may have several vectors (its text and its captions): document-level search keeps
    each document's best item, so a document scores as its best-matching representation.
    """

    name: str
    segments: list[Segment]
    items: pa.Table
    manifest: dict
    item_doc: np.ndarray = field(init=False)  # item row -> position in docs

    def __post_init__(self) -> None:
        if self.items.num_rows and not _ascending(self.items["position"]):  # stored in order: no sort
            self.items = self.items.sort_by("position")
        self._map()

    def _map(self) -> None:
        pos = self.items["position"].to_numpy() if self.items.num_rows else np.zeros(0, np.int64)
        self.positions = pos.astype(np.int64)
        end = max([s.first_id + s.count for s in self.segments], default=0)
        self.row_of = np.full(end, -1, np.int64)
        self.row_of[self.positions] = np.arange(len(self.positions))
        self._params: list = [None] * len(self.segments)
        for i, s in enumerate(self.segments):
            live = self.row_of[s.first_id:s.first_id + s.count] >= 0
            if not live.all():
                self._params[i] = _excluding(self.manifest, np.flatnonzero(~live))
        # doc ids in first-appearance order, and each item's document, hashed in Arrow (no Python
        # objects per row: this runs on every load of an index of millions of vectors)
        enc = (self.items["doc_id"].combine_chunks().dictionary_encode() if self.items.num_rows
               else pa.array([], pa.string()).dictionary_encode())
        self._doc_ids: pa.Array = enc.dictionary
        self.item_doc = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        counts = np.bincount(self.item_doc, minlength=len(self._doc_ids)) if len(self._doc_ids) else np.zeros(0, int)
        self.max_items_per_doc = int(counts.max()) if len(counts) else 1
        self._docs: np.ndarray | None = None
        self._doc_items: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def docs(self) -> np.ndarray:
        """Doc ids (objects), first appearance order: `docs[p]` is the document at position p."""
        if self._docs is None:
            self._docs = self._doc_ids.to_numpy(zero_copy_only=False)
        return self._docs

    @property
    def count(self) -> int:
        """Live vectors (the id map's rows)."""
        return self.items.num_rows

    @property
    def stored(self) -> int:
        """Vectors in the segment files, masked ones included."""
        return sum(s.count for s in self.segments)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def type(self) -> str:
        return self.manifest["type"]

    @property
    def next_id(self) -> int:
        return max([s.first_id + s.count for s in self.segments], default=0)

    def doc_position(self, doc_ids) -> np.ndarray:
        """Positions of doc ids in `docs`; -1 for documents without a vector here."""
        wanted = doc_ids if isinstance(doc_ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(doc_ids), pa.string())
        if len(wanted) == 0:
            return np.zeros(0, np.int64)
        at = pc.index_in(wanted, value_set=self._doc_ids)
        return pc.fill_null(at, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    def doc_positions(self, lists: list[list[str]]) -> list[np.ndarray]:
        """`doc_position` of several id lists in one lookup (one hash of the index's doc ids)."""
        flat = self.doc_position([d for ids in lists for d in ids])
        bounds = np.cumsum([0] + [len(ids) for ids in lists])
        return [flat[bounds[i]:bounds[i + 1]] for i in range(len(lists))]

    # -- search --
    def search_items(self, queries: np.ndarray, k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Batched top-k over the live items: (scores, item rows), -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, max(self.count, 1)))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        if self.count == 0:
            return scores, rows
        for i in range(0, len(queries), batch):
            q = queries[i:i + batch]
            parts_s, parts_r = [], []
            for seg, params in zip(self.segments, self._params):
                if seg.count == 0:
                    continue
                s, local = seg.index.search(q, min(k, seg.count), params=params)
                ok = local >= 0
                parts_s.append(np.where(ok, s, -np.inf).astype(np.float32))
                parts_r.append(np.where(ok, self.row_of[np.where(ok, local + seg.first_id, 0)], -1))
            s, r = np.concatenate(parts_s, axis=1), np.concatenate(parts_r, axis=1)
            if len(parts_s) > 1:
                order = np.argsort(-s, axis=1, kind="stable")[:, :k]
                s, r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
            n = min(k, s.shape[1])
            scores[i:i + len(q), :n], rows[i:i + len(q), :n] = s[:, :n], np.where(np.isfinite(s[:, :n]), r[:, :n], -1)
        return scores, rows

    def search_docs(self, queries: np.ndarray, k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents per query: (scores [B,k], doc positions [B,k]), padded with -inf / -1."""
        B = len(queries)
        out_s = np.full((B, k), -np.inf, np.float32)
        out_d = np.full((B, k), -1, np.int64)
        if self.count == 0 or B == 0:
            return out_s, out_d
        fetch = min(self.count, k * self.max_items_per_doc)
        s, rows = self.search_items(queries, fetch, batch)
        valid = rows >= 0
        doc = np.where(valid, self.item_doc[np.where(valid, rows, 0)], -1)
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

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of item rows (as FAISS reconstructs them: PQ codes decoded)."""
        rows = np.asarray(rows, np.int64)
        out = np.zeros((len(rows), self.dim), np.float32)
        if len(rows) == 0:
            return out
        ids = self.positions[rows]
        starts = np.array([s.first_id for s in self.segments])
        seg = np.searchsorted(starts, ids, side="right") - 1
        for i, s in enumerate(self.segments):
            at = np.flatnonzero(seg == i)
            if len(at):
                out[at] = s.index.reconstruct_batch((ids[at] - s.first_id).astype(np.int64))
        return out

    def doc_scores(self, queries: np.ndarray, doc_positions: list[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of given documents for each query (a document scores as its best item)."""
        if self._doc_items is None:  # items grouped by document: order[bounds[d]:bounds[d + 1]]
            order = np.argsort(self.item_doc, kind="stable")
            self._doc_items = (order, np.searchsorted(self.item_doc[order], np.arange(len(self._doc_ids) + 1)))
        order, bounds = self._doc_items
        out = []
        for q, docs in zip(queries, doc_positions):
            docs = np.asarray(docs, np.int64)
            if len(docs) == 0:
                out.append(np.zeros(0, np.float32))
                continue
            items = [order[bounds[d]:bounds[d + 1]] if d >= 0 else np.zeros(0, np.int64) for d in docs]
            flat = np.concatenate(items) if items else np.zeros(0, np.int64)
            sims = self.vectors(flat) @ np.asarray(q, np.float32)
            scores, pos = np.full(len(docs), -np.inf, np.float32), 0
            for i, it in enumerate(items):
                if len(it):
                    scores[i] = sims[pos:pos + len(it)].max()
                pos += len(it)
            out.append(scores)
        return out

    # -- refresh --
    def add_segment(self, index, items: pa.Table) -> Segment:
        """A new segment (already filled) and its id-map rows; nothing stored is rewritten."""
        seg = Segment(index, self.next_id, f"segment-{uuid.uuid4().hex[:12]}.faiss")
        rows = items.select(ITEM_COLUMNS).add_column(0, "position", pa.array(
            np.arange(seg.first_id, seg.first_id + seg.count), pa.int64()))
        self.segments.append(seg)
        self.items = pa.concat_tables([self.items, rows.cast(self.items.schema)])
        self._map()
        return seg

    def remove(self, positions: np.ndarray) -> None:
        keep = pc.invert(pc.is_in(self.items["position"], value_set=pa.array(positions, pa.int64())))
        self.items = self.items.filter(keep)
        self._map()

    # -- storage: the id map is the version's table, the segment files its attachments --
    def to_output(self, action: str, *, added: pa.Table | None = None, deleted: list[int] | None = None) -> Output:
        """The version to publish: the whole id map (a build) or the new rows and the deleted rows'
        addresses (an addition); segment files not yet stored travel as attachments."""
        import faiss

        attachments = {}
        for seg in self.segments:
            if seg.dir is None:
                if seg.local is None:
                    seg.local = os.path.join(tempfile.mkdtemp(prefix="corpusforge-index-"), seg.file)
                    faiss.write_index(seg.index, seg.local)
                attachments[seg.file] = seg.local
        template = self.manifest.get("template")
        if template and template.get("dir") is None and template.get("local"):
            attachments[template["file"]] = template["local"]
        meta = self.manifest | {"kind": "faiss", "action": action, "segments": [s.entry() for s in self.segments],
                                "count": self.count, "stored": self.stored,
                                "docs": len(self._doc_ids), "max_items_per_doc": self.max_items_per_doc}
        if template:
            meta["template"] = {k: v for k, v in template.items() if k != "local"}
        identity = {k: self.manifest.get(k) for k in ("type", "factory", "params", "space", "dim", "metric")}
        if action == "built":
            return Output(self.items.cast(INDEX_ITEMS), attachments, meta, identity, mode="overwrite")
        rows = (added if added is not None else self.items.slice(0, 0)).cast(INDEX_ITEMS)
        return Output(rows, attachments, meta, identity, mode="delta", deleted=list(deleted or []))

    @classmethod
    def load(cls, items: pa.Table, manifest: dict, attachments: str | None,
             local_path: Callable[[str, str], str]) -> "VectorIndex":
        """An index from its id map and manifest; `attachments` is the version's own folder (where
        its entries without a `dir` live) and `local_path(dir, file)` gives a file locally."""
        import faiss

        manifest = dict(manifest)
        segments = []
        # a flat segment is mapped, not read: its pages come in as a search touches them, so
        # reconstructing a few vectors or adding a segment never reads the stored ones
        flags = faiss.IO_FLAG_MMAP_IFC if manifest.get("type") == "flat" else 0

        def reader(folder: str, file: str):
            def read():
                index = faiss.read_index(local_path(folder, file), flags)
                search_params(index, manifest["type"], manifest["params"])
                return index
            return read

        for e in manifest.get("segments") or []:
            folder = e.get("dir") or attachments
            segments.append(Segment(None, int(e["first_id"]), e["file"], folder, stored_count=int(e["count"]),
                                    load=reader(folder, e["file"])))
        if manifest.get("template"):
            t = dict(manifest["template"])
            t["dir"] = t.get("dir") or attachments
            t["local"] = local_path(t["dir"], t["file"])
            manifest["template"] = t
        return cls(manifest["name"], segments, items.select(["position"] + ITEM_COLUMNS), manifest)


def _ascending(column: pa.ChunkedArray) -> bool:
    pos = column.to_numpy()
    return bool(np.all(pos[1:] > pos[:-1]))


def _excluding(manifest: dict, local_ids: np.ndarray):
    """Search parameters that skip masked (deleted) local ids, keeping the index's own settings."""
    import faiss

    sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(local_ids.astype(np.int64)))
    kind, p = manifest["type"], manifest["params"]
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=p["efSearch"])
    elif kind.startswith("ivf"):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=p["nprobe"])
    else:
        params = faiss.SearchParameters(sel=sel)
    params._keep = sel  # the selector must outlive the parameters (SWIG does not own it)
    return params


@dataclass
class Vectors:
    """The indexable rows of an embeddings dataset (document, caption and image vectors, not queries
    or tree summaries) and their vectors, streamed in row order so a large space is never held in
    memory twice on its way into FAISS."""

    items: pa.Table  # ITEM_COLUMNS + space
    dim: int
    stream: Callable[[], Iterator[np.ndarray]]
    fetch: Callable[[np.ndarray], np.ndarray] | None = None  # rows -> vectors, without a full scan

    def batches(self) -> Iterator[np.ndarray]:
        return self.stream()

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of the given row positions (ascending)."""
        rows = np.asarray(rows, np.int64)
        if self.fetch is not None:
            return self.fetch(rows)
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
        return cls(items, dim, lambda: (vectors[i:i + batch_rows] for i in range(0, len(vectors), batch_rows)),
                   lambda rows: vectors[rows])

    @classmethod
    def from_dataset(cls, ds, batch_rows: int = 16384) -> "Vectors":
        """The indexable vectors of an embeddings version (a Lance dataset): the id columns are
        read once, the vectors streamed shard by shard or fetched by row address."""
        filt = "item_kind IN ('document', 'caption', 'image') AND doc_id IS NOT NULL"
        items = ds.to_table(columns=ITEM_COLUMNS + ["space"], filter=filt, with_row_address=True)
        addrs = items["_rowaddr"].to_numpy()
        items = items.drop_columns(["_rowaddr"])
        vtype = ds.schema.field("vector").type
        dim = vtype.list_size if pa.types.is_fixed_size_list(vtype) else 0

        def stream() -> Iterator[np.ndarray]:
            for batch in ds.scanner(columns=["vector"], filter=filt, batch_size=batch_rows).to_batches():
                yield np.ascontiguousarray(vectors_of(pa.table({"vector": batch.column(0)})))

        def fetch(rows: np.ndarray) -> np.ndarray:
            if len(rows) == 0:
                return np.zeros((0, dim), np.float32)
            got = ds._take_rows(addrs[rows].tolist(), columns=["vector"])
            return np.ascontiguousarray(vectors_of(got))

        return cls(items, dim, stream, fetch)


def _indexable_mask(table: pa.Table) -> np.ndarray | None:
    """Rows that stand for a document; None when all of them do."""
    if table.num_rows == 0:
        return None
    keep = pc.and_(pc.is_in(table["item_kind"], value_set=pa.array(INDEXED_KINDS)),
                   pc.fill_null(pc.is_valid(table["doc_id"]), False))
    return None if pc.all(keep).as_py() else keep.to_numpy(zero_copy_only=False).astype(bool)
