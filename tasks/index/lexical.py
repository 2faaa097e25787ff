"""BM25 over each document's text (its text plus its captions, by the one rule in tasks.corpus),
so images are found by words too."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.config import IndexConfig
from schemas.tables import INDEX_ITEMS
from tasks.corpus import document_texts
from tasks.runtime.catalog import now
from tasks.runtime.ids import record_id
from tasks.runtime.stage import Output

BM25_NAME = "bm25"


def lexical_texts(documents: pa.Table, captions: pa.Table | None = None) -> pa.Table:
    """One text per document that has any: its text and captions."""
    texts = {d: t for d, t in document_texts(documents, captions).items() if t}
    ids = sorted(texts)
    return pa.table({"doc_id": pa.array(ids, pa.string()), "text": pa.array([texts[d] for d in ids], pa.string())})


def texts_hash(texts: pa.Table) -> str:
    return record_id(texts["doc_id"].to_pylist(), texts["text"].to_pylist())


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

    def to_output(self) -> Output:
        """The id map as the version's table, the bm25s files as its attachments."""
        tmp = Path(tempfile.mkdtemp(prefix="corpusforge-bm25-"))
        if len(self.docs):
            self.retriever.save(str(tmp / "bm25"))
        files = {f"bm25/{f.name}": str(f) for f in sorted((tmp / "bm25").iterdir())} if (tmp / "bm25").exists() else {}
        ids = list(self.docs)
        table = pa.table({"position": pa.array(range(len(ids)), pa.int64()), "item_id": pa.array(ids, pa.string()),
                          "item_kind": pa.array(["document"] * len(ids), pa.string()),
                          "doc_id": pa.array(ids, pa.string()), "content_sha256": pa.nulls(len(ids), pa.string())},
                         schema=INDEX_ITEMS)
        meta = self.manifest | {"kind": "bm25", "action": "built"}
        identity = {k: self.manifest[k] for k in ("type", "k1", "b", "tokenizer", "content_hash")}
        return Output(table, files, meta, identity, mode="overwrite")

    @classmethod
    def from_files(cls, items: pa.Table, manifest: dict, folder: str | None) -> "LexicalIndex":
        import bm25s

        docs = items.sort_by("position")["doc_id"].to_numpy(zero_copy_only=False).astype(object)
        retriever = bm25s.BM25.load(folder) if len(docs) and folder else bm25s.BM25()
        return cls(docs, retriever, manifest)
