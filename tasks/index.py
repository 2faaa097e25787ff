"""Indexes: a FAISS index per embedding space and a BM25 index over document texts and captions.

The FAISS type is chosen the way autofaiss does it, from the vector count and a memory budget:
an exact flat index for small corpora, HNSW or IVF beyond, product quantization when the budget
demands it. Each index version is stored under the data root with its id map (row i of
`items.parquet` is FAISS id i) and a manifest, and registered in the catalog's `indexes` table.
On refresh, new vectors are added to the current index instead of rebuilding it, unless the
chosen type changes, vectors were removed, or a trained index (IVF/PQ) outgrew its training.
"""
from __future__ import annotations

import json
import logging
import math
import posixpath
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import IndexConfig
from tasks.runtime.catalog import Catalog, json_dumps, now, register_ddl
from tasks.runtime.storage import DataRoot

log = logging.getLogger(__name__)

STAGE = "index"
INDEXED_KINDS = ("document", "caption", "image")  # vectors that stand for a document
METRIC = "inner_product"  # vectors are L2-normalized, so this is cosine similarity
BM25_NAME = "bm25"

INDEXES_DDL = """
CREATE TABLE IF NOT EXISTS indexes (
    name            VARCHAR NOT NULL,     -- text | image | ... (embeddings/<name>) or bm25
    version         INTEGER NOT NULL,
    kind            VARCHAR NOT NULL,     -- faiss | bm25
    index_type      VARCHAR NOT NULL,     -- flat | hnsw | ivf_flat | ivf_pq | bm25
    path            VARCHAR NOT NULL,     -- folder under the data root
    space           VARCHAR,
    count           BIGINT NOT NULL,      -- vectors (faiss) or documents (bm25)
    dim             INTEGER,
    action          VARCHAR NOT NULL,     -- built | added
    manifest        VARCHAR NOT NULL,     -- JSON
    source_name     VARCHAR,
    source_version  INTEGER,
    is_current      BOOLEAN NOT NULL,
    run_id          VARCHAR,
    created_at      TIMESTAMP NOT NULL,
    PRIMARY KEY (name, version)
);
"""
register_ddl(INDEXES_DDL)


# ---- choosing the index type -----------------------------------------------------------------
@dataclass(frozen=True)
class IndexPlan:
    type: str  # flat | hnsw | ivf_flat | ivf_pq
    factory: str  # faiss index_factory string
    params: dict
    est_mb: float


def plan_index(n: int, dim: int, cfg: IndexConfig) -> IndexPlan:
    """The index type for n vectors of this dimension under the memory budget."""
    budget = cfg.memory_budget_mb * 2**20
    flat = n * dim * 4
    hnsw = n * (dim * 4 + cfg.hnsw_m * 2 * 4)  # level-0 graph links: 2*M int32 per vector
    nlist = cfg.ivf_nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # >= 39 training points per list
    ivf = n * (dim * 4 + 8) + nlist * dim * 4
    kind = cfg.type
    if kind == "auto":
        if n <= cfg.flat_max_vectors and flat <= budget:
            kind = "flat"
        elif n <= cfg.hnsw_max_vectors and hnsw <= budget:
            kind = "hnsw"
        elif ivf <= budget:
            kind = "ivf_flat"
        else:
            kind = "ivf_pq"
    if kind == "flat":
        return IndexPlan("flat", "Flat", {}, flat / 2**20)
    if kind == "hnsw":
        return IndexPlan("hnsw", f"HNSW{cfg.hnsw_m},Flat",
                         {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction,
                          "efSearch": cfg.hnsw_ef_search}, hnsw / 2**20)
    if kind == "ivf_flat":
        return IndexPlan("ivf_flat", f"IVF{nlist},Flat", {"nlist": nlist, "nprobe": min(cfg.ivf_nprobe, nlist)},
                         ivf / 2**20)
    bits = max(1, min(cfg.pq_bits, int(math.log2(max(n, 2)))))  # k-means needs >= 2^bits points
    # sub-vectors of >= 8 dimensions: finer codes train slowly and add little recall
    divisors = [m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0]
    fixed = nlist * dim * 4 + dim * (2**bits) * 4
    fitting = [m for m in divisors if n * (m * bits / 8 + 8) + fixed <= budget]
    if not fitting:
        log.warning("even PQ1 exceeds the %s MB index budget for %d vectors; using the smallest code",
                    cfg.memory_budget_mb, n)
    m = max(fitting) if fitting else 1
    est = n * (m * bits / 8 + 8) + fixed
    return IndexPlan("ivf_pq", f"IVF{nlist},PQ{m}x{bits}",
                     {"nlist": nlist, "nprobe": min(cfg.ivf_nprobe, nlist), "pq_m": m, "pq_bits": bits},
                     est / 2**20)


def build_faiss(vectors: "np.ndarray | Vectors", plan: IndexPlan, seed: int = 0):
    """Train (IVF/PQ, on a seeded sample) and fill an index, batch by batch."""
    import faiss

    if isinstance(vectors, np.ndarray):
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        vectors = Vectors(pa.table({"space": pa.nulls(len(arr), pa.string())}), arr.shape[1], lambda: iter([arr]))
        n = len(arr)
    else:
        n = vectors.items.num_rows
    index = faiss.index_factory(vectors.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.type == "hnsw":
        index.hnsw.efConstruction = plan.params["efConstruction"]
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        cap = max(plan.params.get("nlist", 1) * 256, 2 ** plan.params.get("pq_bits", 0) * 256)
        rows = np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))
        index.train(vectors.take(rows))
    for batch in vectors.batches():
        index.add(batch)
    _search_params(index, plan.type, plan.params)
    return index


def _search_params(index, type_: str, params: dict) -> None:
    import faiss

    if type_ == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif type_.startswith("ivf"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = params["nprobe"]
        ivf.make_direct_map()  # reconstruct() scores positives and lexical candidates


# ---- a vector index with its id map -----------------------------------------------------------
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

    # -- refresh --
    def add(self, items: pa.Table, vectors: np.ndarray) -> None:
        """Append vectors (and their id-map rows) without rebuilding."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.items = pa.concat_tables([self.items, items.select(self.items.column_names).cast(self.items.schema)])
        self._map_docs()
        self.manifest.update(count=self.count, docs=len(self.docs), max_items_per_doc=self.max_items_per_doc)

    # -- storage --
    def save(self, root: DataRoot, path: str) -> None:
        import faiss
        import pyarrow.fs as pafs

        root.fs.create_dir(path, recursive=True)
        if isinstance(root.fs, pafs.LocalFileSystem):  # straight to disk, no in-memory copy
            faiss.write_index(self.index, posixpath.join(path, "index.faiss"))
        else:
            with root.fs.open_output_stream(posixpath.join(path, "index.faiss")) as f:
                f.write(faiss.serialize_index(self.index))
        root.write(self.items, posixpath.join(path, "items.parquet"))
        _write_json(root, posixpath.join(path, "manifest.json"), self.manifest)

    @classmethod
    def load(cls, root: DataRoot, path: str) -> "VectorIndex":
        import faiss

        import pyarrow.fs as pafs

        manifest = _read_json(root, posixpath.join(path, "manifest.json"))
        if isinstance(root.fs, pafs.LocalFileSystem):
            index = faiss.read_index(posixpath.join(path, "index.faiss"))
        else:
            with root.fs.open_input_stream(posixpath.join(path, "index.faiss")) as f:
                index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
        _search_params(index, manifest["type"], manifest["params"])
        items = root.read(posixpath.join(path, "items.parquet"))
        return cls(manifest["name"], index, items, manifest)


ITEM_COLUMNS = ["item_id", "item_kind", "doc_id", "content_sha256"]


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
    def from_parquet(cls, root: DataRoot, path: str, batch_rows: int = 16384) -> "Vectors":
        import pyarrow.parquet as pq

        table = root.read(path, columns=ITEM_COLUMNS + ["space"])
        keep = _indexable_mask(table)
        items = table.filter(pa.array(keep)) if keep is not None else table
        vtype = pq.read_schema(path, filesystem=root.fs).field("vector").type
        dim = vtype.list_size if pa.types.is_fixed_size_list(vtype) else None

        def stream() -> Iterator[np.ndarray]:
            start = 0
            with root.fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f, buffer_size=1 << 22, pre_buffer=False).iter_batches(
                        batch_size=batch_rows, columns=["vector"], use_threads=False):
                    v = vectors_of(pa.table({"vector": batch.column(0)}))
                    if keep is not None:
                        v = v[keep[start:start + len(v)]]
                    start += batch.num_rows
                    yield np.ascontiguousarray(v)

        if dim is None:
            dim = next((b.shape[1] for b in stream() if len(b)), 0)
        return cls(items, dim, stream)


def _indexable_mask(table: pa.Table) -> np.ndarray | None:
    """Rows that stand for a document; None when all of them do."""
    if table.num_rows == 0:
        return None
    keep = pc.and_(pc.is_in(table["item_kind"], value_set=pa.array(INDEXED_KINDS)),
                   pc.fill_null(pc.is_valid(table["doc_id"]), False))
    return None if pc.all(keep).as_py() else keep.to_numpy(zero_copy_only=False).astype(bool)


def vectors_of(table: pa.Table) -> np.ndarray:
    col = table["vector"].combine_chunks()
    if table.num_rows == 0:
        return np.zeros((0, 0), np.float32)
    dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else len(col[0])
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


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

    index = build_faiss(vecs, plan) if rows.num_rows else _empty_faiss(plan, dim)
    manifest = {
        "name": name, "space": space, "dim": dim, "metric": METRIC, "type": plan.type, "factory": plan.factory,
        "params": plan.params, "estimated_mb": round(plan.est_mb, 3), "memory_budget_mb": cfg.memory_budget_mb,
        "count": rows.num_rows, "trained_count": rows.num_rows, "added_since_build": 0,
        "built_at": str(now()), "source": source, "faiss": _faiss_version(),
    }
    vi = VectorIndex(name, index, rows.select(ITEM_COLUMNS), manifest)
    manifest.update(docs=len(vi.docs), max_items_per_doc=vi.max_items_per_doc)
    return RefreshResult(vi, "built", added=rows.num_rows, reason=reason)


def _empty_faiss(plan: IndexPlan, dim: int):
    import faiss

    return faiss.IndexFlatIP(max(dim, 1))


def _item_key_list(rows: pa.Table) -> list[tuple[str, str, str]]:
    return list(zip(rows["item_kind"].to_pylist(), rows["item_id"].to_pylist(), rows["content_sha256"].to_pylist()))


def _item_keys(rows: pa.Table) -> set[tuple[str, str, str]]:
    return set(_item_key_list(rows))


def _faiss_version() -> str:
    import faiss

    return faiss.__version__


# ---- BM25 --------------------------------------------------------------------------------------
def lexical_texts(documents: pa.Table, captions: pa.Table | None = None) -> pa.Table:
    """One text per document: its text, alt-text and captions, so images are found by words too."""
    parts: dict[str, list[str]] = {}
    for d, t, a in zip(documents["doc_id"].to_pylist(), documents["text"].to_pylist(),
                       documents["alt_text"].to_pylist() if "alt_text" in documents.column_names
                       else [None] * documents.num_rows):
        parts[d] = [x for x in (t, a) if x and x.strip()]
    if captions is not None:
        for d, t in zip(captions["doc_id"].to_pylist(), captions["text"].to_pylist()):
            if d in parts and t and t.strip() and t not in parts[d]:
                parts[d].append(t)
    ids = sorted(parts)
    return pa.table({"doc_id": pa.array(ids, pa.string()),
                     "text": pa.array(["\n".join(parts[d]) for d in ids], pa.string())})


@dataclass
class LexicalIndex:
    """bm25s over document texts; `docs[i]` is the document of bm25s row i."""

    docs: np.ndarray
    retriever: object
    manifest: dict

    @classmethod
    def build(cls, texts: pa.Table, cfg: IndexConfig, source: dict | None = None) -> "LexicalIndex":
        import bm25s

        docs = texts["doc_id"].to_numpy(zero_copy_only=False).astype(object)
        retriever = bm25s.BM25(k1=cfg.bm25_k1, b=cfg.bm25_b)
        corpus = texts["text"].to_pylist()
        if corpus:
            retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        manifest = {"name": BM25_NAME, "type": "bm25", "count": len(docs), "k1": cfg.bm25_k1, "b": cfg.bm25_b,
                    "tokenizer": "bm25s.tokenize(stopwords=en)", "content_hash": texts_hash(texts),
                    "built_at": str(now()), "source": source}
        return cls(docs, retriever, manifest)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B,k], doc positions [B,k]) with -inf / -1 where fewer documents match."""
        import bm25s

        B = len(queries)
        out_s = np.full((B, k), -np.inf, np.float32)
        out_d = np.full((B, k), -1, np.int64)
        if B == 0 or len(self.docs) == 0:
            return out_s, out_d
        kk = min(k, len(self.docs))
        tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        docs, scores = self.retriever.retrieve(tokens, k=kk, show_progress=False, n_threads=1)
        matched = scores > 0  # a zero score shares no term with the query
        out_s[:, :kk] = np.where(matched, scores, -np.inf)
        out_d[:, :kk] = np.where(matched, docs, -1)
        return out_s, out_d

    def save(self, root: DataRoot, path: str) -> None:
        root.fs.create_dir(posixpath.join(path, "bm25"), recursive=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.retriever.save(tmp)
            for f in sorted(Path(tmp).iterdir()):
                with root.fs.open_output_stream(posixpath.join(path, "bm25", f.name)) as out:
                    out.write(f.read_bytes())
        root.write(pa.table({"doc_id": pa.array(list(self.docs), pa.string())}), posixpath.join(path, "docs.parquet"))
        _write_json(root, posixpath.join(path, "manifest.json"), self.manifest)

    @classmethod
    def load(cls, root: DataRoot, path: str) -> "LexicalIndex":
        import bm25s
        import pyarrow.fs as pafs

        manifest = _read_json(root, posixpath.join(path, "manifest.json"))
        docs = root.read(posixpath.join(path, "docs.parquet"))["doc_id"].to_numpy(zero_copy_only=False).astype(object)
        with tempfile.TemporaryDirectory() as tmp:
            for info in root.fs.get_file_info(pafs.FileSelector(posixpath.join(path, "bm25"))):
                with root.fs.open_input_stream(info.path) as f:
                    (Path(tmp) / posixpath.basename(info.path)).write_bytes(f.read())
            retriever = bm25s.BM25.load(tmp) if len(docs) else bm25s.BM25()
        return cls(docs, retriever, manifest)


def texts_hash(texts: pa.Table) -> str:
    from tasks.runtime.ids import record_id

    return record_id(texts["doc_id"].to_pylist(), texts["text"].to_pylist())


# ---- the catalog side ---------------------------------------------------------------------------
class IndexStore:
    """Index versions under DATA_ROOT/indexes/<name>/, registered in the catalog's `indexes` table.

    Files go to a fresh folder first; the catalog rows (new version, current flag) are written in
    one transaction afterwards, so a crash never leaves a half-written index current.
    """

    def __init__(self, catalog: Catalog, root: DataRoot):
        self.catalog, self.root = catalog, root

    def current(self, name: str) -> dict | None:
        rows = self.catalog.query("SELECT * FROM indexes WHERE name = ? AND is_current", [name]).to_pylist()
        return rows[0] if rows else None

    def load_vector(self, name: str) -> VectorIndex | None:
        row = self.current(name)
        return VectorIndex.load(self.root, row["path"]) if row else None

    def load_lexical(self) -> LexicalIndex | None:
        row = self.current(BM25_NAME)
        return LexicalIndex.load(self.root, row["path"]) if row else None

    def repoint(self, name: str, source_name: str, source_version: int) -> None:
        """The current index already matches a newer dataset version with the same content."""
        with self.catalog.connect() as con:
            con.execute("UPDATE indexes SET source_name = ?, source_version = ? WHERE name = ? AND is_current",
                        [source_name, source_version, name])

    def items_of(self, name: str, version: int) -> pa.Table | None:
        """The id map of an earlier index version (what it held), or None when it is gone."""
        rows = self.catalog.query("SELECT path FROM indexes WHERE name = ? AND version = ?", [name, version]).to_pylist()
        if not rows or not self.root.exists(posixpath.join(rows[0]["path"], "items.parquet")):
            return None
        return self.root.read(posixpath.join(rows[0]["path"], "items.parquet"))

    def publish(self, obj: VectorIndex | LexicalIndex, action: str, *, source_name: str | None = None,
                source_version: int | None = None, run_id: str | None = None) -> int:
        lexical = isinstance(obj, LexicalIndex)
        name = BM25_NAME if lexical else obj.name
        path = self.root.path("indexes", name, f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}")
        obj.save(self.root, path)
        m = obj.manifest
        with self.catalog.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                version = con.execute("SELECT coalesce(max(version), 0) + 1 FROM indexes WHERE name = ?",
                                      [name]).fetchone()[0]
                con.execute("UPDATE indexes SET is_current = false WHERE name = ? AND is_current", [name])
                con.execute(
                    "INSERT INTO indexes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,true,?,?)",
                    [name, version, "bm25" if lexical else "faiss", m["type"], path, m.get("space"),
                     m["count"], m.get("dim"), action, json_dumps(m | {"version": version}), source_name,
                     source_version, run_id, now()])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        log.info("index %s v%d: %s %s (%d)", name, version, action, m["type"], m["count"])
        return version


def _write_json(root: DataRoot, path: str, obj: dict) -> None:
    root.fs.create_dir(posixpath.dirname(path), recursive=True)
    with root.fs.open_output_stream(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def _read_json(root: DataRoot, path: str) -> dict:
    with root.fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


# ---- the stage -----------------------------------------------------------------------------------
def run_index(ctx, embeddings: list, documents=None, captions=None, logger=None) -> dict:
    """Bring every space's FAISS index and the BM25 index up to date with the current datasets.

    `embeddings` are refs of `embeddings/<name>` datasets; each gets index `<name>`. An index
    already built from the same dataset version is left alone without loading it.
    """
    from tasks.runtime.accounting import StageOutput
    from tasks.runtime.context import stage_clock
    from tasks.runtime.ids import fingerprint

    logger = logger or log
    started_at, t0 = stage_clock()
    cfg: IndexConfig = ctx.config.index
    store = IndexStore(ctx.catalog, ctx.root)
    summary: dict[str, dict] = {}
    total = 0
    for ref in embeddings:
        name = ref.name.split("/", 1)[1]
        cur = store.current(name)
        if cur and cur["source_name"] == ref.name and cur["source_version"] == ref.version:
            summary[name] = {"action": "unchanged", "version": cur["version"], "type": cur["index_type"],
                             "count": cur["count"]}
            total += cur["count"]
            continue
        table = Vectors.from_parquet(ctx.root, ref.path)  # streamed: never two copies of the space
        encoder = ctx.config.embed.text.model_dump(mode="json") if name == "text" else None
        source = {"dataset": ref.name, "version": ref.version, "encoder": encoder}
        res = refresh_vector_index(name, table, store.load_vector(name) if cur else None, cfg, source)
        del table
        total += res.index.count
        if res.action == "unchanged":
            store.repoint(name, ref.name, ref.version)
            version = cur["version"]
        else:
            version = store.publish(res.index, res.action, source_name=ref.name, source_version=ref.version,
                                    run_id=ctx.run_id)
        summary[name] = {"action": res.action, "version": version, "type": res.index.type,
                         "count": res.index.count, "added": res.added, "reason": res.reason}
        logger.info("index %s: %s (%s, %d vectors%s)", name, res.action, res.index.type, res.index.count,
                    f"; {res.reason}" if res.reason else "")
    if cfg.bm25 and documents is not None:
        texts = lexical_texts(ctx.read(documents.name, documents.version),
                              ctx.read(captions.name, captions.version) if captions is not None else None)
        cur = store.current(BM25_NAME)
        digest = texts_hash(texts)
        if cur and json.loads(cur["manifest"]).get("content_hash") == digest:
            summary[BM25_NAME] = {"action": "unchanged", "version": cur["version"], "count": cur["count"]}
        else:
            lex = LexicalIndex.build(texts, cfg, {"dataset": documents.name, "version": documents.version,
                                                  "captions": captions.version if captions is not None else None})
            version = store.publish(lex, "built", source_name=documents.name, source_version=documents.version,
                                    run_id=ctx.run_id)
            summary[BM25_NAME] = {"action": "built", "version": version, "count": len(lex.docs)}
            logger.info("index bm25: built over %d documents", len(lex.docs))
    out = StageOutput(STAGE, {}, rows_in=total, rows_out=total, notes=summary)
    if ctx.run_id is not None:
        ctx.record(out, parents=[], fingerprint=fingerprint(cfg), started_at=started_at, started=t0, logger=logger)
    return summary


# ---- search --------------------------------------------------------------------------------------
def search(store: IndexStore, text: str, k: int = 10, retriever: str = "dense", index: str = "text",
           embedder=None) -> pa.Table:
    """Top-k documents for a text query: rank, doc_id, score, retriever.

    The query is embedded with the encoder recorded in the index manifest (or `embedder`), and
    refused when that encoder's space differs from the index's.
    """
    rows: list[dict] = []
    if retriever in ("dense", "both"):
        vi = store.load_vector(index)
        if vi is None:
            raise LookupError(f"no vector index '{index}' in the catalog: run `corpusforge build` (the index stage) first")
        emb = embedder or _embedder_for(vi)
        if getattr(emb, "name", vi.manifest.get("space")) != vi.manifest.get("space"):
            raise ValueError(f"encoder space {emb.name} differs from index space {vi.manifest.get('space')}")
        s, d = vi.search_docs(emb.embed([text]), k)
        rows += [{"doc_id": vi.docs[j], "score": float(x), "retriever": "dense"} for x, j in zip(s[0], d[0]) if j >= 0]
    if retriever in ("bm25", "both"):
        lex = store.load_lexical()
        if lex is None:
            raise LookupError("no BM25 index in the catalog: enable index.bm25 and run `corpusforge build`")
        s, d = lex.search([text], k)
        rows += [{"doc_id": lex.docs[j], "score": float(x), "retriever": "bm25"} for x, j in zip(s[0], d[0]) if j >= 0]
    if retriever == "both":  # fuse the two lists by reciprocal rank (scores are not comparable)
        fused: dict[str, float] = {}
        for kind in ("dense", "bm25"):
            for r, row in enumerate(x for x in rows if x["retriever"] == kind):
                fused[row["doc_id"]] = fused.get(row["doc_id"], 0.0) + 1.0 / (60 + r + 1)
        rows = [{"doc_id": d, "score": s, "retriever": "rrf"} for d, s in sorted(fused.items(), key=lambda x: -x[1])][:k]
    return pa.table({"rank": pa.array(range(1, len(rows) + 1), pa.int32()),
                     "doc_id": pa.array([r["doc_id"] for r in rows], pa.string()),
                     "score": pa.array([r["score"] for r in rows], pa.float32()),
                     "retriever": pa.array([r["retriever"] for r in rows], pa.string())})


def _embedder_for(vi: VectorIndex):
    from schemas.config import TextEncoder
    from tasks.backends.embedders import local_text_embedder

    encoder = (vi.manifest.get("source") or {}).get("encoder")
    if not encoder:
        raise ValueError(f"index '{vi.name}' records no text encoder; pass --config so the query can be embedded")
    return local_text_embedder(TextEncoder.model_validate(encoder).model_dump_json())


# ---- Prefect task --------------------------------------------------------------------------------
def _stage_task():
    from tasks.runtime.prefect_support import run_logger, stage_task

    @stage_task(STAGE)
    def index_task(ctx, refs: dict) -> dict:
        """FAISS index per embedding space and the BM25 index, refreshed incrementally."""
        embeddings = [ref for name, ref in sorted(refs.items()) if name.startswith("embeddings/")]
        return run_index(ctx, embeddings, refs.get("documents"), refs.get("captions"), logger=run_logger())

    return index_task


index_task = _stage_task()
