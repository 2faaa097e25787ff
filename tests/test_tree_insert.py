"""Incremental updates: inserting 1% keeps the invariants and touches O(depth) nodes; delete prunes."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.tree.build import BuildParams, build_bottom_up, build_top_down
from tasks.tree.insert import delete_documents, insert_documents
from tasks.tree.model import ROOT, check_invariants
from tasks.tree.summarize import ExtractiveSummarizer, TermStats
from tests.test_tree_data import hashed_embedder, synthetic_corpus

BUILDS = {"bottom_up": build_bottom_up, "top_down": build_top_down}
N = 2000


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(N, n_topics=30, seed=3)


def _counts_consistent(tree) -> bool:
    counts = tree.n_leaves()
    return all(counts[v] == len(tree.leaves_under(v)) for v in tree.live_nodes())


def _built(corpus, mode, m=8, n=N - N // 100):
    ids, texts, vecs, topics = corpus
    summarizer = ExtractiveSummarizer(TermStats.of(texts[:n]))
    params = BuildParams(max_branching=m, node_vectors="centroid")  # synthetic leaves: no text encoder shares their space
    tree = BUILDS[mode]("t", ids[:n], texts[:n], vecs[:n], summarizer, hashed_embedder(), params)
    return tree, summarizer, params


@pytest.mark.parametrize("mode", ["bottom_up", "top_down"])
def test_insert_one_percent_keeps_invariants_and_touches_o_depth(corpus, mode):
    ids, texts, vecs, topics = corpus
    n = N - N // 100
    tree, summarizer, params = _built(corpus, mode)
    before = {tree.node_id[v]: tree.text[v] for v in tree.live_nodes()}
    height = tree.height()
    touched_each = []
    for i in range(n, N):  # one document per update, so each report is one insert's footprint
        report = insert_documents(tree, [ids[i]], [texts[i]], vecs[i:i + 1], summarizer, hashed_embedder(), params)
        assert report.inserted == 1
        touched_each.append(report.touched)
    assert check_invariants(tree, ids) == []
    assert tree.n_docs == N and _counts_consistent(tree)
    # the path to the root, plus one new sibling per level a split cascades through
    assert max(touched_each) <= 2 * tree.height() + 1
    assert np.mean(touched_each) <= tree.height() + 2
    assert tree.height() <= height + 1
    # nodes off the touched paths keep their summaries
    after = {tree.node_id[v]: tree.text[v] for v in tree.live_nodes()}
    changed = [k for k in before if k in after and before[k] != after[k]]
    assert len(changed) <= sum(touched_each)
    assert len(changed) < 0.25 * len([v for v in tree.live_nodes() if not tree.is_leaf(v)])
    # a new document lands among documents of its own topic
    hits = 0
    for i in range(n, N):
        leaf = tree.leaf_of(ids[i])
        siblings = [ids.index(tree.doc_id[c]) for c in tree.children[tree.parent[leaf]] if c != leaf]
        hits += np.mean(topics[siblings] == topics[i]) >= 0.5 if siblings else 0
    assert hits >= 0.8 * (N - n)


def test_batch_insert_resummarizes_each_touched_node_once(corpus):
    ids, texts, vecs, _ = corpus
    n = N - N // 100
    tree, summarizer, params = _built(corpus, "bottom_up")
    calls = []

    class Counting:
        name, stats = summarizer.name, summarizer.stats

        def summarize(self, groups):
            calls.append(len(groups))
            return summarizer.summarize(groups)

        def update_corpus(self, added, removed):
            summarizer.update_corpus(added, removed)

    report = insert_documents(tree, ids[n:], texts[n:], vecs[n:], Counting(), hashed_embedder(), params)
    assert report.inserted == N - n and sum(calls) == report.touched
    assert report.touched < report.inserted * (tree.height() + 2)
    assert check_invariants(tree, ids) == []
    again = insert_documents(tree, ids[n:n + 3], texts[n:n + 3], vecs[n:n + 3], summarizer, None, params)
    assert again.inserted == 0 and again.already_present == ids[n:n + 3] and again.touched == 0


def test_overfull_nodes_split_up_to_the_root():
    ids, texts, vecs, _ = synthetic_corpus(40, n_topics=4, seed=5)
    summarizer = ExtractiveSummarizer(TermStats.of(texts[:4]))
    params = BuildParams(max_branching=3, node_vectors="centroid")
    tree = build_bottom_up("t", ids[:4], texts[:4], vecs[:4], summarizer, None, params)
    report = insert_documents(tree, ids[4:], texts[4:], vecs[4:], summarizer, None, params)
    assert report.splits > 0
    assert check_invariants(tree, ids) == []
    assert tree.height() >= 3  # 40 leaves under branching 3 need at least ceil(log3 40) = 4 levels of nodes


@pytest.mark.parametrize("mode", ["bottom_up", "top_down"])
def test_delete_prunes_emptied_nodes(corpus, mode):
    ids, texts, vecs, _ = corpus
    tree, summarizer, params = _built(corpus, mode, n=600)
    # every document under one internal node: that node and any node it empties must go
    victim = tree.children[tree.children[ROOT][0]][0]
    victim_id = tree.node_id[victim]
    gone = [tree.doc_id[v] for v in tree.leaves_under(victim)]
    report = delete_documents(tree, gone + ["no-such-doc"], summarizer, hashed_embedder(), params)
    assert report.deleted == len(gone) and report.not_found == ["no-such-doc"]
    assert report.pruned >= 1
    live_ids = {tree.node_id[v] for v in tree.live_nodes()}
    assert victim_id not in live_ids
    rest = [d for d in ids[:600] if d not in set(gone)]
    assert check_invariants(tree, rest) == [] and _counts_consistent(tree)
    nodes, _ = tree.to_tables()
    assert set(nodes["doc_id"].drop_null().to_pylist()) == set(rest)
    # deleting everything leaves an empty root, still a valid tree
    report = delete_documents(tree, rest, summarizer, None, params)
    assert tree.n_docs == 0 and tree.children[ROOT] == [] and check_invariants(tree, []) == []


def test_insert_keeps_term_statistics_exact(corpus):
    ids, texts, vecs, _ = corpus
    tree, summarizer, params = _built(corpus, "bottom_up", n=300)
    insert_documents(tree, ids[300:350], texts[300:350], vecs[300:350], summarizer, None, params)
    delete_documents(tree, ids[:20], summarizer, None, params)
    fresh = TermStats.of([tree.text[tree.leaf_of(d)] for d in tree.doc_ids])
    assert summarizer.term_stats.n_docs == fresh.n_docs == 330
    assert +summarizer.term_stats.df == +fresh.df
