"""LLM-guided tree search (LATTICE): global best-first expansion with calibrated path relevance.

Each iteration expands the B unexpanded internal nodes with the highest path relevance anywhere
in the prediction tree (the first iteration expands the root). One scorer call per expanded node
scores its children as a listwise slate, plus anchors that tie slates together: a slate of
leaves gets ℓ calibration leaves sampled from the best leaves seen so far, a slate of internal
nodes gets the best-scoring node already seen at the children's depth. After every iteration the
calibration (s_iv ≈ a·θ_v + b_i, weighted least squares over all slates so far) is refitted,
ŝ_v = a·θ_v / max a·θ, and path relevance is recomputed top-down:
p(root) = 1, p(v) = f·ŝ(v) + (1−f)·p(parent). The final ranking orders the leaves seen by p.

The cost is at most 1 + B·(N−1) scorer calls per query, whatever the corpus size. A slate the
scorer fails on is missing: its children join the prediction tree with ŝ = 0 (the mean node).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from tasks.tree import calibration
from tasks.tree.model import ROOT, Tree
from tasks.tree.scorers import Candidate, SlateScorer


@dataclass(frozen=True)
class SearchParams:
    beam: int = 2
    iterations: int = 20
    calibration_leaves: int = 10
    path_factor: float = 0.5
    seed: int = 0

    @property
    def max_calls(self) -> int:
        return 1 + self.beam * (self.iterations - 1)


@dataclass
class Hit:
    rank: int
    doc_id: str
    node_id: str
    score: float  # path relevance
    calibrated: float  # ŝ of the leaf
    path: list[tuple[str, str]]  # (node_id, summary) from the root's child down to the leaf's parent


@dataclass
class SearchResult:
    query: str
    hits: list[Hit]
    scorer_calls: int
    failed_slates: int
    iterations: int
    expanded: list[str] = field(default_factory=list)  # node ids in expansion order
    calibration: calibration.Calibration | None = None


class _State:
    def __init__(self, tree: Tree, params: SearchParams):
        self.tree = tree
        self.params = params
        self.depth = tree.depths()
        self.seen: list[int] = []  # nodes in the prediction tree, parents before children
        self.seen_set: set[int] = set()
        self.expanded: list[int] = []
        self.expanded_set: set[int] = set()
        self.slates: list[list[tuple[int, float]]] = []
        self.raw: dict[int, tuple[float, int]] = {}  # node -> (sum of scores, count)
        self.shat: dict[int, float] = {}
        self.p: dict[int, float] = {ROOT: 1.0}
        self.cal: calibration.Calibration | None = None

    def see(self, v: int) -> None:
        if v not in self.seen_set:
            self.seen_set.add(v)
            self.seen.append(v)

    def raw_mean(self, v: int) -> float:
        total, n = self.raw.get(v, (0.0, 0))
        return total / n if n else -1.0

    def order_key(self, v: int):
        return (-self.p.get(v, 0.0), -self.raw_mean(v), v)

    def frontier(self) -> list[int]:
        return sorted((v for v in self.seen if not self.tree.is_leaf(v) and v not in self.expanded_set
                       and self.tree.children[v]), key=self.order_key)

    def refit(self) -> None:
        self.cal = calibration.fit(self.slates)
        self.shat = self.cal.scaled()
        f = self.params.path_factor
        for v in self.seen[1:]:  # the root first, then parents before children
            parent = self.tree.parent[v]
            self.p[v] = f * self.shat.get(v, 0.0) + (1 - f) * self.p[parent]


def _calibration_leaves(state: _State, exclude: set[int], rng: np.random.Generator) -> list[int]:
    ell = state.params.calibration_leaves
    if ell <= 0:
        return []
    leaves = [v for v in state.seen if state.tree.is_leaf(v) and v not in exclude]
    leaves.sort(key=lambda v: (-state.shat.get(v, 0.0), -state.raw_mean(v), v))
    pool = leaves[: 2 * ell]
    if len(pool) <= ell:
        return pool
    w = 1.0 / np.arange(1, len(pool) + 1)
    pick = rng.choice(len(pool), size=ell, replace=False, p=w / w.sum())
    return [pool[i] for i in sorted(pick)]


def _anchor(state: _State, depth: int, exclude: set[int]) -> list[int]:
    """The best-scoring node already seen at this depth (by ŝ, then path relevance)."""
    best = None
    for v in state.seen:
        if state.depth[v] == depth and v not in exclude and v in state.raw:
            key = (state.shat.get(v, 0.0), state.p.get(v, 0.0), -v)
            if best is None or key > best[0]:
                best = (key, v)
    return [best[1]] if best else []


def _slate(state: _State, v: int, rng: np.random.Generator) -> list[int]:
    kids = list(state.tree.children[v])
    exclude = set(kids)
    if any(state.tree.is_leaf(c) for c in kids):
        return kids + _calibration_leaves(state, exclude, rng)
    return kids + _anchor(state, state.depth[v] + 1, exclude)


def search(tree: Tree, query: str, scorer: SlateScorer, params: SearchParams = SearchParams(),
           k: int = 100) -> SearchResult:
    """Ranked documents for a query, each with its path of summaries and path relevance."""
    state = _State(tree, params)
    state.see(ROOT)
    seed = int.from_bytes(hashlib.sha256(f"{params.seed}:{query}".encode()).digest()[:4], "big")
    rng = np.random.default_rng(seed)
    calls = failed = iterations = 0
    for it in range(params.iterations):
        batch = [ROOT] if it == 0 else state.frontier()[: params.beam]
        if not batch or (it == 0 and not tree.children[ROOT]):
            break
        iterations += 1
        slates = [_slate(state, v, rng) for v in batch]
        cands = [[Candidate(c, tree.text[c], tree.is_leaf(c), tree.vectors[c]) for c in s] for s in slates]
        results = scorer.score_slates(query, cands)
        calls += len(batch)
        for v, slate, scores in zip(batch, slates, results):
            state.expanded.append(v)
            state.expanded_set.add(v)
            for c in tree.children[v]:
                state.see(c)
            if scores is None:
                failed += 1
                state.slates.append([])
                continue
            obs = [(c, s / 100.0) for c, s in zip(slate, scores) if s is not None]
            for c, s in obs:
                total, n = state.raw.get(c, (0.0, 0))
                state.raw[c] = (total + s, n + 1)
            state.slates.append(obs)
        state.refit()
    return SearchResult(query, _ranking(state, k), calls, failed, iterations,
                        [tree.node_id[v] for v in state.expanded], state.cal)


def _ranking(state: _State, k: int) -> list[Hit]:
    tree = state.tree
    leaves = [v for v in state.seen if tree.is_leaf(v)]
    leaves.sort(key=state.order_key)
    hits = []
    for rank, v in enumerate(leaves[:k], start=1):
        path = [a for a in reversed(tree.ancestors(v)) if a != ROOT]
        hits.append(Hit(rank, tree.doc_id[v], tree.node_id[v], float(state.p[v]), float(state.shat.get(v, 0.0)),
                        [(tree.node_id[a], tree.text[a]) for a in path]))
    return hits
