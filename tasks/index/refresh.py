"""Bringing a vector index up to date with its embeddings: a new segment for new vectors, masked
rows for removed ones, and a rebuild only when the index itself must change.

A rebuild happens when there is no index yet, the space or dimension changed, the corpus size
calls for another index type, an IVF/PQ index outgrew its training (`retrain_growth`), or
compaction is due: masked vectors exceed `compact_fraction` of the stored ones, or there would
be more than `max_segments` segments.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import IndexConfig
from tasks.index.plan import METRIC, IndexPlan, faiss_version, fill, plan_index, train_faiss
from tasks.index.vector import ITEM_COLUMNS, Segment, VectorIndex, Vectors
from tasks.runtime.catalog import now

log = logging.getLogger(__name__)


@dataclass
class RefreshResult:
    index: VectorIndex
    action: str  # built | added | unchanged
    added: int = 0
    removed: int = 0
    reason: str = ""
    new_rows: pa.Table | None = None  # id-map rows of the new segment (an addition)
    removed_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def item_keys(items: pa.Table) -> pa.Array:
    """What identifies a vector across versions: its kind, item id and content."""
    return pc.binary_join_element_wise(items["item_kind"], items["item_id"],
                                       pc.fill_null(items["content_sha256"], ""), "\x1f")


def diff_items(now: pa.Table, before: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(is_new over `now`'s rows, is_gone over `before`'s) by item key, which is unique in an index
    (the embeddings' key): one hash table of the earlier keys, probed once - at millions of items
    this is most of what a small refresh computes."""
    at = pc.index_in(item_keys(now), value_set=item_keys(before))
    is_new = pc.is_null(at).to_numpy(zero_copy_only=False)
    kept = np.zeros(before.num_rows, bool)
    kept[pc.drop_null(at).to_numpy(zero_copy_only=False).astype(np.int64)] = True
    return is_new, ~kept


def refresh_vector_index(name: str, embeddings: pa.Table | Vectors, previous: VectorIndex | None, cfg: IndexConfig,
                         source: dict | None = None) -> RefreshResult:
    """The index for the current embeddings, reusing `previous` where it can (see the module doc)."""
    vecs = embeddings if isinstance(embeddings, Vectors) else Vectors.from_table(embeddings)
    rows, dim = vecs.items, vecs.dim
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
    elif plan.type != previous.type:
        reason = f"corpus size {rows.num_rows} now calls for {plan.type} instead of {previous.type}"
    elif previous.type.startswith("ivf") and rows.num_rows > cfg.retrain_growth * previous.manifest["trained_count"]:
        reason = f"{previous.type} trained on {previous.manifest['trained_count']} vectors, now {rows.num_rows}"
    else:
        new_mask, gone = diff_items(rows, previous.items)
        removed = previous.items["position"].to_numpy()[gone]
        added = int(new_mask.sum())
        if not added and not len(removed):
            return RefreshResult(previous, "unchanged")
        masked = previous.stored - previous.count + len(removed)
        stored = previous.stored + added
        if stored and masked / stored > cfg.compact_fraction:
            reason = f"compaction: {masked} of {stored} stored vectors would be masked"
        elif added and len(previous.segments) + 1 > cfg.max_segments:
            reason = f"compaction: {len(previous.segments) + 1} segments > max_segments {cfg.max_segments}"
        else:
            return _add(previous, vecs, new_mask, removed, plan, source)

    trained = train_faiss(vecs, plan)
    template = _template(trained) if plan.type.startswith("ivf") else None
    index = fill(trained, vecs.batches(), plan)
    manifest = {
        "name": name, "space": space, "dim": dim, "metric": METRIC, "type": plan.type, "factory": plan.factory,
        "params": plan.params, "estimated_mb": round(plan.est_mb, 3), "memory_budget_mb": cfg.memory_budget_mb,
        "trained_count": rows.num_rows, "added_since_build": 0,
        "built_at": str(now()), "source": source, "faiss": faiss_version(),
    }
    if template:
        manifest["template"] = template
    items = rows.select(ITEM_COLUMNS).add_column(0, "position", pa.array(np.arange(rows.num_rows), pa.int64()))
    vi = VectorIndex(name, [Segment(index, 0, "segment-0.faiss")], items, manifest)
    return RefreshResult(vi, "built", added=rows.num_rows, reason=reason)


def _add(previous: VectorIndex, vecs: Vectors, new_mask: np.ndarray, removed: np.ndarray, plan: IndexPlan,
         source: dict | None) -> RefreshResult:
    """Mask the removed vectors and put the new ones in a segment of their own."""
    if len(removed):
        previous.remove(removed)
    new_rows = None
    added = int(new_mask.sum())
    if added:
        at = np.flatnonzero(new_mask)
        sub = vecs.items.take(pa.array(at, pa.int64())).select(ITEM_COLUMNS)
        batch = vecs.take(at)
        index = _from_template(previous, plan) if previous.type.startswith("ivf") else train_faiss(
            Vectors(sub, vecs.dim, lambda: iter([batch]), lambda r: batch[r]), plan)
        fill(index, [batch], plan)
        seg = previous.add_segment(index, sub)
        new_rows = previous.items.slice(previous.count - added) if added else None
        log.info("index %s: segment %s with %d vectors", previous.name, seg.file, added)
    previous.manifest.update(source=source, updated_at=str(now()),
                             added_since_build=previous.manifest.get("added_since_build", 0) + added)
    return RefreshResult(previous, "added", added=added, removed=len(removed), new_rows=new_rows,
                         removed_positions=removed)


def _template(trained) -> dict:
    """The trained, empty IVF index: later segments are filled from it, so all share one quantizer."""
    import faiss

    path = os.path.join(tempfile.mkdtemp(prefix="corpusforge-index-"), "trained.faiss")
    faiss.write_index(trained, path)
    return {"file": "trained.faiss", "dir": None, "local": path}


def _from_template(previous: VectorIndex, plan: IndexPlan):
    import faiss

    return faiss.read_index(previous.manifest["template"]["local"])
