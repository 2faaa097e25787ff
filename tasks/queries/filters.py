"""Query filters (model-free): length, n-gram copying, near-duplicates, round-trip.

Filters never drop a query; they set `pass_*` columns, `passed`, a readable `reject_reason`
and a stable `reject_code` (the failed filters' names, comma-separated).
Round-trip asks the one top-k over the corpus (the text index) whether the source document is
among the query's top k documents.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pyarrow as pa

from schemas.config import QueryFilters
from schemas.tables import QUERIES

_TOKEN = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _TOKEN.findall((text or "").lower())


def copy_overlap(query: str, source: str, n: int = 3) -> float:
    """Share of the query's word n-grams that occur in the source (queries shorter than n use their length)."""
    q, s = words(query), words(source)
    n = max(1, min(n, len(q)))
    grams = [tuple(q[i:i + n]) for i in range(len(q) - n + 1)]
    if not grams:
        return 0.0
    src = {tuple(s[i:i + n]) for i in range(len(s) - n + 1)}
    return sum(g in src for g in grams) / len(grams)


def near_duplicate_pass(groups: Sequence[str], vectors: np.ndarray, threshold: float) -> list[bool]:
    """False for a query whose cosine to an earlier kept query of the same group exceeds the threshold."""
    keep = [True] * len(groups)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for idx in by_group.values():
        kept: list[int] = []
        for i in idx:
            if kept and float(np.max(vectors[kept] @ vectors[i])) > threshold:
                keep[i] = False
            else:
                kept.append(i)
    return keep


def roundtrip_ranks(query_vectors: np.ndarray, source_doc_ids: Sequence[str], index, k: int,
                    batch: int = 1024) -> list[int | None]:
    """1-based rank of each query's source document among the index's top-k documents (a document
    scores as its best vector), or None when it is not in the top k."""
    if len(source_doc_ids) == 0:
        return []
    scores, docs = index.search_docs(np.ascontiguousarray(query_vectors, np.float32), k, batch)
    ranks: list[int | None] = []
    for row, src in zip(docs, source_doc_ids):
        ids = [index.docs[j] for j in row if j >= 0]
        ranks.append(ids.index(src) + 1 if src in ids else None)
    return ranks


def apply_filters(candidates: pa.Table, query_vectors: np.ndarray, index, f: QueryFilters) -> pa.Table:
    """The `queries` table: candidates with every filter outcome, `passed` and the reasons it failed."""
    rows = candidates.to_pylist()
    qv = _normalise(query_vectors)
    dedup = near_duplicate_pass([f"{r['doc_id']}\x00{r['target_modality']}" for r in rows], qv, f.dedup_cosine)
    ranks = roundtrip_ranks(qv, [r["doc_id"] for r in rows], index, f.roundtrip_k)
    out = []
    for r, d, rank in zip(rows, dedup, ranks):
        n_words = len(words(r["text"]))
        overlap = copy_overlap(r["text"], r["source_text"] or "", f.copy_ngram)
        checks = {
            "length": (f.min_words <= n_words <= f.max_words,
                       f"length: {n_words} words outside [{f.min_words}, {f.max_words}]"),
            "copy": (overlap <= f.max_copy_overlap,
                     f"copy: {overlap:.2f} of its {f.copy_ngram}-grams are in the source > {f.max_copy_overlap}"),
            "dedup": (d, f"dedup: cosine > {f.dedup_cosine} with an earlier query of this document and target"),
            "roundtrip": (rank is not None, f"roundtrip: source document not in the top {f.roundtrip_k}"),
        }
        reasons = [why for ok, why in checks.values() if ok is False]
        codes = [name for name, (ok, _) in checks.items() if ok is False]
        out.append(r | {"pass_length": checks["length"][0], "pass_copy": checks["copy"][0],
                        "pass_dedup": d, "pass_roundtrip": rank is not None,
                        "copy_overlap": overlap, "roundtrip_rank": rank,
                        "passed": not reasons, "reject_reason": "; ".join(reasons) or None,
                        "reject_code": ",".join(codes) or None})
    return pa.Table.from_pylist(out, schema=QUERIES)


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if v.size == 0:
        return v
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
