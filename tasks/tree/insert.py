"""Incremental updates: insert new documents and delete removed ones without a rebuild.

Insert: a new leaf walks down from the root, at each level into the internal child whose vector
is closest to its own, and joins the node whose children are leaves. A node that now has more
than M children splits in two (balanced 2-means over its children) and the new sibling joins the
parent, which may split in turn; a root that overflows gets a new level beneath it.
Delete: the leaf goes, and a node left without children goes with it, up the tree.

Only the nodes on the touched paths are re-summarized (and re-embedded), deepest first, once
per update however many documents share them; the report says how many that was.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tasks.tree.build import BuildParams, EmbedFn, leaf_text, summarize_nodes
from tasks.tree.cluster import balanced_partition, normalize
from tasks.tree.model import ROOT, Tree, internal_node_id, leaf_node_id
from tasks.tree.summarize import Summarizer

log = logging.getLogger(__name__)


@dataclass
class UpdateReport:
    inserted: int = 0
    deleted: int = 0
    already_present: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    splits: int = 0
    pruned: int = 0
    touched: int = 0  # internal nodes re-summarized or created

    @property
    def touched_per_change(self) -> float:
        return self.touched / max(self.inserted + self.deleted, 1)


def _descend(tree: Tree, x: np.ndarray) -> int:
    v = ROOT
    while True:
        inner = [c for c in tree.children[v] if not tree.is_leaf(c)]
        if not inner:
            return v
        v = inner[int(np.argmax(tree.vectors[inner] @ x))]


def _split(tree: Tree, v: int, touched: set[int], report: UpdateReport, seed: int) -> None:
    """Split an over-full node, cascading up; the root grows a level instead."""
    M = tree.max_branching
    while len(tree.children[v]) > M:
        kids = list(tree.children[v])
        halves = balanced_partition(tree.vectors[kids], 2, seed)
        report.splits += 1
        if v == ROOT:
            for half in halves:
                moved = [kids[i] for i in half]
                w = tree.add_node(internal_node_id(tree.tree_id, "split", tree.node_id[v],
                                                   min(tree.node_id[m] for m in moved)), ROOT,
                                  np.zeros(tree.dim, np.float32))
                for m in moved:
                    tree.set_parent(m, w)
                touched.add(w)
            return
        moved = [kids[i] for i in halves[1]]
        parent = tree.parent[v]
        w = tree.add_node(internal_node_id(tree.tree_id, "split", tree.node_id[v],
                                           min(tree.node_id[m] for m in moved)), parent,
                          np.zeros(tree.dim, np.float32))
        for m in moved:
            tree.set_parent(m, w)
        touched.update((v, w, parent))
        v = parent


def insert_documents(tree: Tree, doc_ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray,
                     summarizer: Summarizer, embed: EmbedFn | None = None,
                     params: BuildParams = BuildParams()) -> UpdateReport:
    report = UpdateReport()
    touched: set[int] = set()
    vectors = normalize(vectors)
    added = []
    for i, d in enumerate(doc_ids):
        if tree.leaf_of(d) is not None:
            report.already_present.append(d)
            continue
        v = _descend(tree, vectors[i])
        text = leaf_text(texts[i], params.leaf_chars)
        tree.add_node(leaf_node_id(tree.tree_id, d), v, vectors[i], doc_id=d, text=text)
        added.append(text)
        touched.add(v)
        touched.update(tree.ancestors(v))
        _split(tree, v, touched, report, params.seed + i)
        report.inserted += 1
    summarizer.update_corpus(added, [])
    _resummarize(tree, touched, summarizer, embed, params, report)
    return report


def delete_documents(tree: Tree, doc_ids: Sequence[str], summarizer: Summarizer, embed: EmbedFn | None = None,
                     params: BuildParams = BuildParams()) -> UpdateReport:
    report = UpdateReport()
    touched: set[int] = set()
    removed = []
    for d in doc_ids:
        leaf = tree.leaf_of(d)
        if leaf is None:
            report.not_found.append(d)
            continue
        parent = tree.parent[leaf]
        removed.append(tree.text[leaf])
        tree.kill(leaf)
        report.deleted += 1
        while parent != ROOT and not tree.children[parent]:
            up = tree.parent[parent]
            tree.kill(parent)
            report.pruned += 1
            parent = up
        touched.add(parent)
        touched.update(tree.ancestors(parent))
    summarizer.update_corpus([], removed)
    _resummarize(tree, touched, summarizer, embed, params, report)
    return report


def _resummarize(tree: Tree, touched: set[int], summarizer: Summarizer, embed: EmbedFn | None,
                 params: BuildParams, report: UpdateReport) -> None:
    """Summaries of touched nodes, deepest first, each depth in one batch."""
    live = [v for v in touched if tree.alive[v] and (tree.children[v] or v == ROOT)]
    report.touched = len(live)
    if not live:
        return
    depth = tree.depths()
    counts = tree.n_leaves()
    for d in sorted({depth[v] for v in live}, reverse=True):
        level = sorted(v for v in live if depth[v] == d)
        if level == [ROOT] and not tree.children[ROOT]:
            tree.text[ROOT] = "(empty tree)"
            continue
        summarize_nodes(tree, level, summarizer, embed, params, counts)
