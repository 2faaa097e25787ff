"""Candidates per query from the dense index, BM25 or both (lexical candidates are scored in the
dense space, so margins compare like with like). Memory stays bounded: a batched top-k, never a
query x corpus matrix."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.index.lexical import LexicalIndex
from tasks.index.vector import VectorIndex

DENSE, LEXICAL = 1, 2
RETRIEVER_LABEL = {DENSE: "dense", LEXICAL: "bm25", DENSE | LEXICAL: "dense+bm25"}


@dataclass
class Candidates:
    """Per query, candidates in descending score order; positions index `universe` (-1 = padding)."""

    query_ids: list[str]
    doc: np.ndarray  # int64 [B, K]
    score: np.ndarray  # float32 [B, K], -inf padding
    rank: np.ndarray  # int32 [B, K], 1-based position in the retrieved list (positives included)
    retriever: np.ndarray  # uint8 [B, K], DENSE | LEXICAL bits
    universe: np.ndarray  # doc ids

    @property
    def shape(self) -> tuple[int, int]:
        return self.doc.shape


def retrieve(index: VectorIndex, query_vectors: np.ndarray, query_texts: list[str], query_ids: list[str],
             depth: int, source: str = "dense", lexical: LexicalIndex | None = None,
             batch: int = 1024, prior=None) -> Candidates:
    """Top-`depth` candidates per query from the dense index, BM25 or both.

    Lexical candidates are scored in the dense space (a document scores as its best vector), so
    margins compare like with like; the retriever bits say who found each one. Dense queries in
    `prior` (tasks.negatives.refresh.Prior, a refresh) merge their previous list with the new
    vectors instead of searching the index.
    """
    B = len(query_ids)
    if source == "dense":
        s, d = _dense(index, query_vectors, list(query_ids), depth, batch, prior)
        r = np.broadcast_to(np.arange(1, depth + 1, dtype=np.int32), d.shape).copy()
        return Candidates(list(query_ids), d, s, r, np.where(d >= 0, DENSE, 0).astype(np.uint8), index.docs)
    if lexical is None:
        raise ValueError(f"negatives.source={source} needs the BM25 index; enable index.bm25 and rebuild")
    lex_s, lex_d = lexical.search(list(query_texts), depth)
    to_dense = index.doc_position(lexical.docs) if len(lexical.docs) else np.zeros(0, np.int64)
    lex_pos = np.where(lex_d >= 0, to_dense[np.where(lex_d >= 0, lex_d, 0)] if len(to_dense) else -1, -1)
    if source == "both":
        ds, dd = index.search_docs(query_vectors, depth, batch)
    width = depth * (2 if source == "both" else 1)
    out_d = np.full((B, width), -1, np.int64)
    out_s = np.full((B, width), -np.inf, np.float32)
    out_r = np.zeros((B, width), np.uint8)
    lex_scores = index.doc_scores(query_vectors, [row[row >= 0] for row in lex_pos])
    for i in range(B):
        found: dict[int, list] = {}
        if source == "both":
            for doc, sc in zip(dd[i], ds[i]):
                if doc >= 0:
                    found[int(doc)] = [float(sc), DENSE]
        for doc, sc in zip(lex_pos[i][lex_pos[i] >= 0], lex_scores[i]):
            if int(doc) in found:
                found[int(doc)][1] |= LEXICAL
            else:
                found[int(doc)] = [float(sc), LEXICAL]
        ordered = sorted(found.items(), key=lambda kv: -kv[1][0])
        for j, (doc, (sc, bits)) in enumerate(ordered):
            out_d[i, j], out_s[i, j], out_r[i, j] = doc, sc, bits
    rank = np.broadcast_to(np.arange(1, width + 1, dtype=np.int32), out_d.shape).copy()
    return Candidates(list(query_ids), out_d, out_s, rank, out_r, index.docs)


def _dense(index: VectorIndex, vectors: np.ndarray, query_ids: list[str], depth: int, batch: int, prior):
    if prior is None:
        return index.search_docs(vectors, depth, batch)
    merged = [i for i, q in enumerate(query_ids) if q in prior]
    searched = [i for i, q in enumerate(query_ids) if q not in prior]
    s = np.full((len(query_ids), depth), -np.inf, np.float32)
    d = np.full((len(query_ids), depth), -1, np.int64)
    if searched:
        s[searched], d[searched] = index.search_docs(vectors[searched], depth, batch)
    if merged:
        s[merged], d[merged] = prior.top([query_ids[i] for i in merged], vectors[merged], depth)
    return s, d
