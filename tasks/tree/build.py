"""Tree builds over leaf embeddings: bottom-up (cluster, summarize, repeat) and top-down (topics).

Both are plain functions over arrays; the summarizer and the embedding function are passed in,
so tests build trees in milliseconds with the offline summarizer and the stage plugs in an LLM.

- Bottom-up: leaves are grouped into balanced groups of similar vectors, each group becomes a
  node with a summary and a vector (the embedded summary, the centroid of its documents, or
  both), and the new nodes are grouped again until ≤ M remain under the root. The number of
  groups per level spreads the fan-out evenly (`level_sizes`), so every node, the root included,
  has about n^(1/height) ≤ M children. Metadata groups (e.g. passages of one source document)
  may form the first level.
- Top-down: each document gets keyword summaries from coarse to fine; at a node with more than M
  documents the coarsest level with more than M distinct summaries is clustered into ≤ M topics,
  documents follow their summary's topic (unassigned ones go to the nearest topic by
  embedding), and children with more than M documents recurse.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from tasks.tree.cluster import balanced_partition, groups_of_at_most, level_sizes, normalize
from tasks.tree.model import ROOT, Tree, internal_node_id, leaf_node_id
from tasks.tree.summarize import SEP, Group, Summarizer, excerpt

log = logging.getLogger(__name__)

EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class BuildParams:
    max_branching: int = 10
    node_vectors: Literal["summary", "centroid", "both"] = "summary"
    leaf_chars: int = 1000
    seed: int = 0


def leaf_text(text: str | None, limit: int) -> str:
    text = " ".join((text or "").split())
    return text[:limit] or "(no text)"


LEAF_SAMPLE = 48  # documents per node the offline summarizer reads: the ones nearest the centroid


def _leaf_centroids(tree: Tree, nodes: list[int]) -> tuple[np.ndarray, list[list[int]]]:
    """The normalized mean of the document vectors under each node, and those leaves."""
    out = np.zeros((len(nodes), tree.dim), np.float32)
    leaves = []
    for i, v in enumerate(nodes):
        under = tree.leaves_under(v)
        leaves.append(under)
        if under:
            out[i] = tree.vectors[under].sum(0)
    return normalize(out), leaves


def _node_vectors(nodes: list[int], summaries: list[str], centroids: np.ndarray, embed: EmbedFn | None,
                  params: BuildParams) -> np.ndarray:
    """summary: the embedded summary; centroid: the documents' centroid; both: their normalized sum."""
    if params.node_vectors == "centroid" or embed is None:
        return centroids
    summary = normalize(embed(summaries))
    return summary if params.node_vectors == "summary" else normalize(summary + centroids)


def _new_tree(tree_id: str, space: str, summarizer: Summarizer, params: BuildParams, dim: int) -> Tree:
    tree = Tree(tree_id, space, summarizer.name, params.max_branching, dim)
    tree.add_node(internal_node_id(tree_id, "root"), -1, np.zeros(dim, np.float32), text="")
    return tree


def _add_leaves(tree: Tree, doc_ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray,
                params: BuildParams, parent: int = -1) -> list[int]:
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("doc_ids must be unique: a document is exactly one leaf")
    return [tree.add_node(leaf_node_id(tree.tree_id, d), parent, vectors[i], doc_id=d,
                          text=leaf_text(texts[i], params.leaf_chars)) for i, d in enumerate(doc_ids)]


def summarize_nodes(tree: Tree, nodes: list[int], summarizer: Summarizer, embed: EmbedFn | None,
                    params: BuildParams, leaf_counts: np.ndarray | None = None) -> None:
    """(Re)write the summary and vector of each node from its current children, in one batch."""
    if not nodes:
        return
    counts = leaf_counts if leaf_counts is not None else tree.n_leaves()
    weights = counts.astype(np.float32)
    centroids, leaves = _leaf_centroids(tree, nodes)
    groups = []
    for v, c, under in zip(nodes, centroids, leaves):
        kids = tree.children[v]
        near = [under[i] for i in np.argsort(-(tree.vectors[under] @ c), kind="stable")[:LEAF_SAMPLE]] if under else []
        groups.append(Group([tree.text[k] for k in kids], tree.vectors[kids], weights[kids],
                            leaf_texts=[tree.text[u] for u in near]))
    summaries = summarizer.summarize(groups)
    for v, s in zip(nodes, summaries):
        tree.text[v] = s
    tree.vectors[nodes] = _node_vectors(nodes, summaries, centroids, embed, params)


def build_bottom_up(tree_id: str, doc_ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray,
                    summarizer: Summarizer, embed: EmbedFn | None = None, params: BuildParams = BuildParams(),
                    space: str = "", groups: Sequence[str | None] | None = None) -> Tree:
    vectors = normalize(vectors)
    M = params.max_branching
    tree = _new_tree(tree_id, space, summarizer, params, vectors.shape[1])
    level = _add_leaves(tree, doc_ids, texts, vectors, params)
    depth = 0
    if groups is not None:
        level = _metadata_level(tree, level, list(groups), summarizer, embed, params)
        depth = 1
    for size in level_sizes(len(level), M):
        depth += 1
        parts = balanced_partition(tree.vectors[level], size, seed=params.seed + depth)
        level = _make_parents(tree, level, parts, f"bu{depth}", summarizer, embed, params)
        log.info("bottom-up level %d: %d nodes", depth, len(level))
    for v in level:
        tree.set_parent(v, ROOT)
    summarize_nodes(tree, [ROOT], summarizer, embed, params, tree.n_leaves())
    return tree


def _make_parents(tree: Tree, level: list[int], parts: list[np.ndarray], tag: str, summarizer: Summarizer,
                  embed: EmbedFn | None, params: BuildParams) -> list[int]:
    parents = []
    for part in parts:
        members = [level[i] for i in part]
        first = min(tree.node_id[m] for m in members)
        p = tree.add_node(internal_node_id(tree.tree_id, tag, first), -1, np.zeros(tree.dim, np.float32))
        for m in members:
            tree.set_parent(m, p)
        parents.append(p)
    summarize_nodes(tree, parents, summarizer, embed, params, tree.n_leaves())
    return parents


def _metadata_level(tree: Tree, leaves: list[int], keys: list[str | None], summarizer: Summarizer,
                    embed: EmbedFn | None, params: BuildParams) -> list[int]:
    """First level from metadata: one node per key (split when above M); keyless leaves clustered."""
    M = params.max_branching
    by_key: dict[str, list[int]] = defaultdict(list)
    loose = []
    for i, k in enumerate(keys):
        (by_key[k] if k is not None else loose).append(i)
    parts: list[np.ndarray] = []
    for k in sorted(by_key):
        idx = np.array(by_key[k])
        parts.extend(idx[p] for p in groups_of_at_most(tree.vectors[[leaves[i] for i in idx]], M, params.seed))
    if loose:
        idx = np.array(loose)
        parts.extend(idx[p] for p in groups_of_at_most(tree.vectors[[leaves[i] for i in idx]], M, params.seed))
    return _make_parents(tree, leaves, parts, "meta", summarizer, embed, params)


# ---- top-down -------------------------------------------------------------------------------
def build_top_down(tree_id: str, doc_ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray,
                   summarizer: Summarizer, embed: EmbedFn | None = None, params: BuildParams = BuildParams(),
                   space: str = "") -> Tree:
    vectors = normalize(vectors)
    M = params.max_branching
    tree = _new_tree(tree_id, space, summarizer, params, vectors.shape[1])
    levels = summarizer.keyword_levels([leaf_text(t, params.leaf_chars) for t in texts])
    titles: dict[int, str] = {}
    stack: list[tuple[int, np.ndarray]] = [(ROOT, np.arange(len(doc_ids)))]
    while stack:
        node, idx = stack.pop()
        if len(idx) <= M:
            _add_leaves(tree, [doc_ids[i] for i in idx], [texts[i] for i in idx], vectors[idx], params, node)
            continue
        for title, sub in _split_topics(idx, levels, vectors, summarizer, M, params.seed + len(tree.node_id)):
            child = tree.add_node(internal_node_id(tree_id, "td", tree.node_id[node], min(doc_ids[i] for i in sub)),
                                  node, np.zeros(tree.dim, np.float32))
            titles[child] = title
            stack.append((child, sub))
    _finish_top_down(tree, titles, summarizer, embed, params)
    return tree


def _split_topics(idx: np.ndarray, levels: list[list[str]], vectors: np.ndarray, summarizer: Summarizer,
                  M: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """≤ M (title, document indices) topics over the documents `idx`, every one non-empty."""
    n_levels = len(levels[0]) if levels else 0
    for lvl in range(n_levels):
        keys = [levels[i][lvl] for i in idx]
        uniq, inverse = np.unique(np.array(keys, dtype=object), return_inverse=True)
        if len(uniq) <= M:
            continue
        weights = np.bincount(inverse).astype(np.float32)
        item_vecs = np.zeros((len(uniq), vectors.shape[1]), np.float32)
        np.add.at(item_vecs, inverse, vectors[idx])
        item_vecs = normalize(item_vecs)
        labels, titles = summarizer.topics(list(uniq), item_vecs, weights, M, seed)
        labels = _assign_unassigned(labels, item_vecs, weights, len(titles))
        doc_labels = labels[inverse]
        topics = [(titles[c], idx[doc_labels == c]) for c in range(len(titles))]
        topics = [(t, sub) for t, sub in topics if len(sub)]
        if len(topics) >= 2:
            return topics
        break
    n_groups = min(M, math.ceil(len(idx) / M))
    parts = balanced_partition(vectors[idx], n_groups, seed)
    return [(summarizer.title([levels[i][0] for i in idx[p]]) if levels else "", idx[p]) for p in parts]


def _assign_unassigned(labels: np.ndarray, vecs: np.ndarray, weights: np.ndarray, n_topics: int) -> np.ndarray:
    """Items the summarizer left out (-1) join the topic whose centroid is nearest."""
    missing = labels < 0
    if not missing.any() or n_topics == 0:
        return labels
    centroids = np.zeros((n_topics, vecs.shape[1]), np.float32)
    np.add.at(centroids, labels[~missing], vecs[~missing] * weights[~missing, None])
    labels = labels.copy()
    labels[missing] = np.argmax(vecs[missing] @ normalize(centroids).T, axis=1)
    return labels


def _finish_top_down(tree: Tree, titles: dict[int, str], summarizer: Summarizer, embed: EmbedFn | None,
                     params: BuildParams) -> None:
    """Summary of a topic node: its title plus the most central passage beneath it."""
    counts = tree.n_leaves()
    internal = [v for v in tree.live_nodes() if not tree.is_leaf(v)]
    centroid: dict[int, np.ndarray] = {}
    for v in reversed(internal):
        kids = tree.children[v]
        centroid[v] = normalize((np.stack([centroid.get(c, tree.vectors[c]) for c in kids])
                                 * counts[kids, None]).sum(0))
    for v in internal:
        leaves = tree.leaves_under(v)
        central = leaves[int(np.argmax(tree.vectors[leaves] @ centroid[v]))]
        title = titles.get(v) or ", ".join(titles[c] for c in tree.children[v] if c in titles)[:200]
        ex = excerpt(tree.text[central])
        tree.text[v] = (title + SEP + ex) if title and ex else (title or ex or "(untitled)")
    tree.vectors[internal] = _node_vectors(internal, [tree.text[v] for v in internal],
                                           np.stack([centroid[v] for v in internal]), embed, params)
