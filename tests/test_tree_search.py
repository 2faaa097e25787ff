"""Tree search: calibration recovery, path relevance and frontier order, cost, scorer parsing."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.tree import calibration
from tasks.tree.build import BuildParams, build_bottom_up
from tasks.tree.model import ROOT, Tree
from tasks.tree.scorers import EmbeddingScorer, parse_scores
from tasks.tree.search import SearchParams, search
from tasks.tree.summarize import ExtractiveSummarizer, TermStats
from tests.test_tree_data import llmjudge_slice, llmjudge_tree, synthetic_corpus


# ---- calibration ----------------------------------------------------------------------------
def _synthetic_slates(seed=0, n_nodes=80, n_slates=40, size=12, noise=0.01):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n_nodes)
    theta = (theta - theta.mean()) / theta.std()
    a, b = 0.2, rng.uniform(-0.15, 0.15, n_slates)
    slates = []
    for i in range(n_slates):
        members = rng.choice(n_nodes, size, replace=False)
        slates.append([(int(v), a * theta[v] + b[i] + rng.normal(0, noise)) for v in members])
    return slates, theta, a, b


def test_calibration_recovers_offsets_scale_and_latents():
    slates, theta, a, b = _synthetic_slates()
    cal = calibration.fit(slates)
    seen = np.array(cal.nodes)
    true = theta[seen]
    true_std = (true - true.mean()) / true.std()
    scale = a * true.std()  # θ is reported standardised over the nodes the slates hold
    shift = a * true.mean()
    assert cal.a == pytest.approx(scale, rel=0.03)
    err = np.abs(cal.theta - true_std)  # noise 0.01 on a scale of 0.2, about 6 observations per node
    assert err.mean() < 0.04 and err.max() < 0.15
    assert np.abs(cal.b - (b + shift)).max() < 0.02
    shat = cal.scaled()
    assert max(shat.values()) == pytest.approx(1.0)
    assert shat[int(seen[np.argmax(true)])] == pytest.approx(1.0)


def test_calibration_ignores_a_slate_offset_that_raw_scores_would_keep():
    # the same two nodes, scored in a lenient slate and a strict one, plus one unique node each
    slates = [[(0, 0.9), (1, 0.7), (2, 0.8)], [(0, 0.5), (1, 0.3), (3, 0.45)]]
    cal = calibration.fit(slates)
    shat = cal.scaled()
    # raw scores put node 2 (0.8) far above node 3 (0.45); the shared nodes say slate 1 is 0.4
    # stricter, so node 3 is worth 0.85 on slate 0's scale and ranks above node 2
    assert shat[0] > shat[3] > shat[2] > shat[1]
    assert cal.b[0] - cal.b[1] == pytest.approx(0.4, abs=1e-3)
    u = {v: cal.a * t for v, t in zip(cal.nodes, cal.theta)}
    assert u[3] - u[2] == pytest.approx(0.05, abs=1e-3)


def test_calibration_with_empty_and_missing_slates():
    cal = calibration.fit([[], [(7, 0.5)], []])
    assert cal.nodes == [7] and cal.scaled() == {7: 0.0}
    assert calibration.fit([]).scaled() == {}


# ---- hand-built tree, deterministic scorer -------------------------------------------------
#   root ─ A ─ A1 ─ a1x, a1y
#        │   └ A2 ─ a2x
#        └ B ─ B1 ─ b1x, b1y
#            └ B2 ─ b2x
SCORES = {"A": 80, "B": 60, "A1": 30, "A2": 20, "B1": 90, "B2": 10,
          "a1x": 40, "a1y": 35, "a2x": 15, "b1x": 95, "b1y": 70, "b2x": 5}


def _hand_tree() -> Tree:
    tree = Tree("hand", "none", "hand", 3, 2)
    tree.add_node("root", -1, np.zeros(2), text="root")
    idx = {}
    for name, parent in [("A", "root"), ("B", "root"), ("A1", "A"), ("A2", "A"), ("B1", "B"), ("B2", "B")]:
        idx[name] = tree.add_node(name, idx.get(parent, ROOT), np.zeros(2), text=name)
    for leaf, parent in [("a1x", "A1"), ("a1y", "A1"), ("a2x", "A2"), ("b1x", "B1"), ("b1y", "B1"), ("b2x", "B2")]:
        tree.add_node(leaf, idx[parent], np.zeros(2), doc_id=leaf, text=leaf)
    return tree


class TableScorer:
    """Scores every candidate by its text from a fixed table; records the slates it saw."""

    name = "table"

    def __init__(self, table):
        self.table = table
        self.stats = {"calls": 0}
        self.slates: list[list[str]] = []

    def score_slates(self, query, slates):
        self.stats["calls"] += len(slates)
        self.slates += [[c.text for c in s] for s in slates]
        return [[float(self.table[c.text]) for c in s] for s in slates]


def test_frontier_is_global_best_first_and_path_relevance_chains():
    tree = _hand_tree()
    scorer = TableScorer(SCORES)
    result = search(tree, "q", scorer, SearchParams(beam=1, iterations=20, calibration_leaves=2, path_factor=0.5))
    # after A, its children (ŝ below the mean) lose to B in the other subtree: global, not greedy
    assert result.expanded[:4] == ["root", "A", "B", "B1"]
    assert result.scorer_calls == 7 == len(result.expanded)  # every internal node, then the frontier is empty
    # the internal slate under B carries the best node already seen at depth 2 (A1) as its anchor
    assert scorer.slates[2] == ["B1", "B2", "A1"]
    # the leaf slate under B1 carries no calibration leaves yet; the next leaf slate carries two
    assert scorer.slates[3] == ["b1x", "b1y"]
    assert len(scorer.slates[4]) == len(tree.children[tree.node_id.index(result.expanded[4])]) + 2

    # with consistent slates the fit is exact: ŝ = (s - mean) / (max - mean) over scored nodes
    seen = [n for n in SCORES]
    s = np.array([SCORES[n] for n in seen], float)
    shat = dict(zip(seen, (s - s.mean()) / (s.max() - s.mean())))
    p = {"root": 1.0}
    for name in ["A", "B", "A1", "A2", "B1", "B2", "a1x", "a1y", "a2x", "b1x", "b1y", "b2x"]:
        parent = tree.node_id[tree.parent[tree.node_id.index(name)]]
        p[name] = 0.5 * shat[name] + 0.5 * p[parent]
    got = {h.doc_id: h.score for h in result.hits}
    for leaf in ["a1x", "a1y", "a2x", "b1x", "b1y", "b2x"]:
        assert got[leaf] == pytest.approx(p[leaf], abs=1e-6)
    assert [h.doc_id for h in result.hits] == sorted(got, key=lambda d: -p[d])
    top = result.hits[0]
    assert top.doc_id == "b1x" and [n for n, _ in top.path] == ["B", "B1"]


def test_path_factor_one_ranks_by_leaf_score_alone():
    result = search(_hand_tree(), "q", TableScorer(SCORES), SearchParams(beam=2, iterations=20, path_factor=1.0))
    leaves = ["b1x", "b1y", "a1x", "a1y", "a2x", "b2x"]
    assert [h.doc_id for h in result.hits] == sorted(leaves, key=lambda d: -SCORES[d])


def test_failed_slates_are_missing_not_zero():
    class Flaky(TableScorer):
        def score_slates(self, query, slates):
            out = super().score_slates(query, slates)
            return [None if "B1" in s else o for s, o in zip(self.slates[-len(slates):], out)]

    result = search(_hand_tree(), "q", Flaky(SCORES), SearchParams(beam=1, iterations=20))
    assert result.failed_slates == 1
    assert result.scorer_calls == 7
    # B's slate failed, so B1 and B2 were never scored; they sit at ŝ = 0, the mean node
    tree = _hand_tree()
    assert result.calibration is not None
    assert tree.node_id.index("B1") not in result.calibration.nodes
    assert tree.node_id.index("b1x") in result.calibration.nodes


# ---- cost and real embeddings -------------------------------------------------------------
@pytest.mark.parametrize("n", [600, 3000])
def test_cost_is_one_plus_b_times_n_minus_one_whatever_the_size(n):
    ids, texts, vecs, topics = synthetic_corpus(n, n_topics=30)
    tree = build_bottom_up("t", ids, texts, vecs, ExtractiveSummarizer(TermStats.of(texts)), None,
                           BuildParams(max_branching=5, node_vectors="centroid"))
    scorer = EmbeddingScorer(lambda qs: vecs[:1])
    params = SearchParams(beam=2, iterations=20)
    result = search(tree, "a query", scorer, params)
    assert result.scorer_calls == params.max_calls == 39 == scorer.stats["calls"]
    assert len(result.expanded) == len(set(result.expanded)) == 39
    # the query is document 0's vector: the search finds it and its topic mates
    assert result.hits[0].doc_id == ids[0]
    top10 = [ids.index(h.doc_id) for h in result.hits[:10]]
    assert np.mean(topics[top10] == topics[0]) >= 0.9


def test_embedding_search_on_llmjudge_finds_relevant_passages(minilm):
    ids, texts, vecs, queries, qrels = llmjudge_slice()
    tree = llmjudge_tree("bottom_up", 10)
    scorer = EmbeddingScorer(minilm.embed)
    in_slice = set(ids)
    hits_at_10 = []
    for qid in sorted(queries)[:8]:
        result = search(tree, queries[qid], scorer, SearchParams(), k=10)
        assert result.scorer_calls <= 39
        rel = {d for d, g in qrels[qid].items() if g >= 2 and d in in_slice}
        hits_at_10.append(len(rel & {h.doc_id for h in result.hits}) / max(min(len(rel), 10), 1))
        assert all(h.path and h.path[0][1] for h in result.hits)  # every hit names its summaries
    assert np.mean(hits_at_10) > 0.5, hits_at_10


# ---- LLM answer parsing --------------------------------------------------------------------
@pytest.mark.parametrize("raw, n, want", [
    ('{"scores": {"0": 85, "1": 10, "2": 40}}', 3, [85.0, 10.0, 40.0]),
    ('Sure! ```json\n{"scores": [5, 99]}\n``` hope this helps', 2, [5.0, 99.0]),
    ('{"scores": {"0": 85, "2": 140, "x": 3}}', 3, [85.0, None, None]),
    ('{"relevance_scores": {"[1]": "70"}}', 2, [None, 70.0]),
    ("I think candidate 0 is best", 2, None),
    ('{"scores": "high"}', 2, None),
    ('{"scores": {"7": 50}}', 2, None),
    ("{not json at all", 2, None),
    ("", 2, None),
])
def test_parse_scores(raw, n, want):
    assert parse_scores(raw, n) == want
