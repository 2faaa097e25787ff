"""Refresh: which queries a refresh must mine again, and for those that only new vectors reach,
their new candidate lists without searching the whole index again; the others keep their negatives."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.index.refresh import diff_items
from tasks.index.vector import VectorIndex


def affected_queries(prev_state: pa.Table, prev_candidates: pa.Table, state_now: dict[str, str],
                     index: VectorIndex, prev_items: pa.Table, query_vectors_by_id: dict[str, np.ndarray],
                     positives: dict[str, list[str]]) -> tuple[set[str], set[str], np.ndarray, dict]:
    """Queries whose negatives can differ from the previous run's.

    A query is affected when it is new or its inputs changed (text, positives, judgments,
    modality); when a document it retrieved or one of its positives lost or changed a vector; or
    when a new vector scores at least its lowest retrieved score (its list was full) - otherwise
    the new document cannot enter its top-k, and its negatives stay as they were. Returns the
    affected queries, those of them that only new vectors reach (`Prior` merges their lists), the
    index rows of the new vectors, and the counts.
    """
    prev_hash = dict(zip(prev_state["query_id"].to_pylist(), prev_state["input_hash"].to_pylist()))
    cutoff = dict(zip(prev_state["query_id"].to_pylist(), prev_state["dense_cutoff"].to_pylist()))
    changed = {q for q, h in state_now.items() if prev_hash.get(q) != h}

    is_added, is_removed = diff_items(index.items, prev_items)
    added_rows = np.flatnonzero(is_added)
    lost_docs = set(prev_items["doc_id"].filter(pa.array(is_removed)).to_pylist())
    touched_docs = set(index.items["doc_id"].filter(pa.array(is_added)).to_pylist()) | lost_docs
    by_lost = set()
    if lost_docs:
        hit = pc.is_in(prev_candidates["doc_id"], value_set=pa.array(sorted(lost_docs), pa.string()))
        by_lost = set(prev_candidates.filter(hit)["query_id"].to_pylist())
    by_positive = {q for q, docs in positives.items() if touched_docs.intersection(docs)}
    by_score: set[str] = set()
    if len(added_rows):
        qids = [q for q in state_now if q not in changed]
        for start in range(0, len(qids), 4096):
            chunk = qids[start:start + 4096]
            best = np.full(len(chunk), -np.inf, np.float32)
            qv = np.stack([query_vectors_by_id[q] for q in chunk])
            for rows in _row_chunks(added_rows):
                best = np.maximum(best, (qv @ index.vectors(rows).T).max(axis=1))
            by_score |= {q for q, b in zip(chunk, best) if b >= cutoff.get(q, float("-inf"))}
    affected = changed | by_lost | by_positive | by_score
    # only new vectors reach these, and their lists were full: the new top-k is the old one merged
    # with the new vectors' best, no search of the whole index
    full = dict(zip(prev_state["query_id"].to_pylist(), prev_state["dense_full"].to_pylist()))
    merge = {q for q in by_score - changed - by_lost - by_positive if full.get(q)}
    return affected, merge, added_rows, {"new_or_changed_queries": len(changed), "by_removed_documents": len(by_lost),
                      "by_changed_positives": len(by_positive), "by_new_documents": len(by_score),
                      "vectors_added": len(added_rows), "vectors_removed": int(is_removed.sum()),
                      "queries_merged": len(merge)}


ROW_CHUNK = 65_536  # new vectors scored at a time: a large delta never becomes one matrix


def _row_chunks(rows: np.ndarray):
    for start in range(0, len(rows), ROW_CHUNK):
        yield rows[start:start + ROW_CHUNK]


@dataclass
class Prior:
    """Dense candidate lists of the previous run for queries that only new vectors can change: the
    refreshed top-k is the previous list (every document of it still indexed, unchanged) merged
    with the best of the new vectors, which is what a search of the grown index returns for a
    flat index, at the cost of scoring the new vectors alone."""

    index: VectorIndex
    lists: dict[str, tuple[np.ndarray, np.ndarray]]  # query_id -> (doc positions, scores)
    added_rows: np.ndarray  # index item rows of the new vectors

    @classmethod
    def of(cls, index: VectorIndex, candidates: pa.Table, queries: set[str], added_rows: np.ndarray) -> "Prior":
        t = candidates.filter(pc.and_(pc.is_in(candidates["query_id"], value_set=pa.array(sorted(queries),
                                                                                        pa.string())),
                                      pc.equal(candidates["retriever"], "dense")))
        t = t.sort_by([("query_id", "ascending"), ("rank", "ascending")])
        pos = index.doc_position(t["doc_id"])
        scores = t["score"].to_numpy(zero_copy_only=False).astype(np.float32)
        qids = t["query_id"].to_numpy(zero_copy_only=False)
        lists = {}
        if len(qids):
            starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
            for a, b in zip(starts, np.r_[starts[1:], len(qids)]):
                lists[qids[a]] = (pos[a:b], scores[a:b])
        return cls(index, lists, np.asarray(added_rows, np.int64))

    def __contains__(self, query_id: str) -> bool:
        return query_id in self.lists

    def top(self, query_ids: list[str], vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, depth], doc positions [B, depth]) of the merged lists, -inf / -1 padded."""
        B = len(query_ids)
        best: list[dict[int, float]] = [dict(zip(self.lists[q][0].tolist(), self.lists[q][1].tolist()))
                                        for q in query_ids]
        qv = np.asarray(vectors, np.float32)
        for rows in _row_chunks(self.added_rows):
            sims = qv @ self.index.vectors(rows).T  # [B, chunk]
            k = min(depth * self.index.max_items_per_doc, sims.shape[1])
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            for i in range(B):
                for j in top[i]:
                    d, sc = int(self.index.item_doc[rows[j]]), float(sims[i, j])
                    if sc > best[i].get(d, -np.inf):
                        best[i][d] = sc
        out_s = np.full((B, depth), -np.inf, np.float32)
        out_d = np.full((B, depth), -1, np.int64)
        for i, found in enumerate(best):
            ordered = sorted(((d, sc) for d, sc in found.items() if d >= 0), key=lambda kv: -kv[1])[:depth]
            for j, (d, sc) in enumerate(ordered):
                out_d[i, j], out_s[i, j] = d, sc
        return out_s, out_d
