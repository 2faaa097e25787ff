"""Refresh: which queries a refresh must mine again; the others keep their negatives."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.index.vector import VectorIndex


def affected_queries(prev_state: pa.Table, prev_candidates: pa.Table, state_now: dict[str, str],
                     index: VectorIndex, prev_items: pa.Table, query_vectors_by_id: dict[str, np.ndarray],
                     positives: dict[str, list[str]]) -> tuple[set[str], dict]:
    """Queries whose negatives can differ from the previous run's.

    A query is affected when it is new or its inputs changed (text, positives, judgments,
    modality); when a document it retrieved or one of its positives lost or changed a vector; or
    when a new vector scores at least its lowest retrieved score (its list was full) - otherwise
    the new document cannot enter its top-k, and its negatives stay as they were.
    """
    prev_hash = dict(zip(prev_state["query_id"].to_pylist(), prev_state["input_hash"].to_pylist()))
    cutoff = dict(zip(prev_state["query_id"].to_pylist(), prev_state["dense_cutoff"].to_pylist()))
    changed = {q for q, h in state_now.items() if prev_hash.get(q) != h}

    now_keys, old_keys = _keys(index.items), _keys(prev_items)
    is_added = pc.invert(pc.is_in(now_keys, value_set=old_keys))
    is_removed = pc.invert(pc.is_in(old_keys, value_set=now_keys))
    added_rows = np.flatnonzero(is_added.to_numpy(zero_copy_only=False))
    lost_docs = set(prev_items["doc_id"].filter(is_removed).to_pylist())
    touched_docs = set(index.items["doc_id"].filter(is_added).to_pylist()) | lost_docs
    by_lost = set()
    if lost_docs:
        hit = pc.is_in(prev_candidates["doc_id"], value_set=pa.array(sorted(lost_docs), pa.string()))
        by_lost = set(prev_candidates.filter(hit)["query_id"].to_pylist())
    by_positive = {q for q, docs in positives.items() if touched_docs.intersection(docs)}
    by_score: set[str] = set()
    if len(added_rows):
        new_vecs = index.vectors(added_rows)
        qids = [q for q in state_now if q not in changed]
        for start in range(0, len(qids), 4096):
            chunk = qids[start:start + 4096]
            best = (np.stack([query_vectors_by_id[q] for q in chunk]) @ new_vecs.T).max(axis=1)
            by_score |= {q for q, b in zip(chunk, best) if b >= cutoff.get(q, float("-inf"))}
    affected = changed | by_lost | by_positive | by_score
    return affected, {"new_or_changed_queries": len(changed), "by_removed_documents": len(by_lost),
                      "by_changed_positives": len(by_positive), "by_new_documents": len(by_score),
                      "vectors_added": len(added_rows), "vectors_removed": int(pc.sum(is_removed).as_py() or 0)}


def _keys(items: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(items["item_kind"], items["item_id"],
                                       pc.fill_null(items["content_sha256"], ""), "\x1f")
