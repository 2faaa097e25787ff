"""Tree builds: invariants of both builds, depth, metadata groups, readable summaries, Arrow form."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.tree.build import BuildParams, build_bottom_up, build_top_down
from tasks.tree.cluster import balanced_partition, groups_of_at_most
from tasks.tree.model import ROOT, Tree, check_invariants, expected_depth
from tasks.tree.summarize import SEP, ExtractiveSummarizer, TermStats
from tests.test_tree_data import hashed_embedder, llmjudge_slice, llmjudge_tree, synthetic_corpus

BUILDS = {"bottom_up": build_bottom_up, "top_down": build_top_down}


def _offline(texts):
    return ExtractiveSummarizer(TermStats.of(texts))


@pytest.fixture(scope="module")
def synth():
    return synthetic_corpus(1000, n_topics=25)


def test_balanced_groups_never_exceed_m_and_stay_near_it():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1234, 16)).astype(np.float32)
    groups = groups_of_at_most(x, 10)
    sizes = [len(g) for g in groups]
    assert len(groups) == 124  # ceil(1234 / 10)
    assert max(sizes) <= 10 and min(sizes) >= 9
    assert sorted(np.concatenate(groups).tolist()) == list(range(1234))
    assert [len(p) for p in balanced_partition(x[:7], 2)] in ([3, 4], [4, 3])


def test_balanced_groups_follow_clusters(synth):
    ids, texts, vecs, topics = synth
    groups = groups_of_at_most(vecs, 10)
    purity = np.mean([np.bincount(topics[g]).max() / len(g) for g in groups])
    assert purity > 0.8, purity


@pytest.mark.parametrize("mode", ["bottom_up", "top_down"])
@pytest.mark.parametrize("m", [6, 12])
def test_synthetic_invariants_and_depth(synth, mode, m):
    ids, texts, vecs, topics = synth
    tree = BUILDS[mode]("t", ids, texts, vecs, _offline(texts), hashed_embedder(),
                        BuildParams(max_branching=m, node_vectors="summary"))
    assert check_invariants(tree, ids) == []
    assert tree.n_docs == len(ids)
    kids = [len(tree.children[v]) for v in tree.live_nodes() if not tree.is_leaf(v)]
    assert max(kids) <= m
    want = expected_depth(len(ids), m)
    if mode == "bottom_up":
        assert tree.height() == want
        assert {tree.depths()[tree.leaf_of(d)] for d in ids} == {want}
    else:  # topics are uneven: most leaves sit near log_M(N), a few deeper
        depth = tree.depths()
        assert np.mean([depth[tree.leaf_of(d)] for d in ids]) <= want + 1.5
        assert want <= tree.height() <= 2 * want, (tree.height(), want)


def test_top_down_groups_documents_by_topic(synth):
    ids, texts, vecs, topics = synth
    tree = build_top_down("t", ids, texts, vecs, _offline(texts), None, BuildParams(max_branching=10))
    parents = {}
    for d, t in zip(ids, topics):
        parents.setdefault(tree.parent[tree.leaf_of(d)], []).append(t)
    purity = np.mean([np.bincount(ts).max() / len(ts) for ts in parents.values()])
    assert purity > 0.8, purity


def test_bottom_up_metadata_first_level(synth):
    ids, texts, vecs, topics = synth
    ids, texts, vecs = ids[:300], texts[:300], vecs[:300]
    sources = [f"src{i // 7}" if i % 10 else None for i in range(300)]  # runs of 7, some without a source
    tree = build_bottom_up("t", ids, texts, vecs, _offline(texts), None, BuildParams(max_branching=10),
                           groups=sources)
    assert check_invariants(tree, ids) == []
    by_parent: dict[int, set] = {}
    for d, s in zip(ids, sources):
        by_parent.setdefault(tree.parent[tree.leaf_of(d)], set()).add(s)
    # every first-level node holds one source's passages, or only passages without a source
    assert all(len(s) == 1 for s in by_parent.values())
    keyed = {s for group in by_parent.values() for s in group if s is not None}
    assert len(keyed) == len({s for s in sources if s})


def test_summaries_are_extractive_and_distinctive(synth):
    ids, texts, vecs, topics = synth
    tree = build_bottom_up("t", ids, texts, vecs, _offline(texts), None, BuildParams(max_branching=10))
    internal = [v for v in tree.live_nodes() if not tree.is_leaf(v)]
    for v in internal[:60]:
        keys, _, excerpt = tree.text[v].partition(SEP)
        assert keys and excerpt
        under = " ".join(tree.text[leaf] for leaf in tree.leaves_under(v)).lower()
        for phrase in keys.split(", "):
            assert phrase in under, (phrase, v)
    # a level-1 node's first keyphrase is a word of its dominant topic's vocabulary
    v = tree.parent[tree.leaf_of(ids[0])]
    first = tree.text[v].split(", ")[0].split()[0]
    members = [i for i, d in enumerate(ids) if tree.parent[tree.leaf_of(d)] == v]
    dominant = np.bincount(topics[members]).argmax()
    topic_text = " ".join(texts[i] for i in range(len(ids)) if topics[i] == dominant).lower()
    other_text = " ".join(texts[i] for i in range(len(ids)) if topics[i] != dominant).lower()
    assert first in topic_text and topic_text.count(first) > other_text.count(first)


@pytest.mark.parametrize("mode", ["bottom_up", "top_down"])
def test_llmjudge_slice_with_minilm(minilm, mode):
    ids, texts, vecs, _, _ = llmjudge_slice()
    tree = llmjudge_tree(mode, 10)
    assert check_invariants(tree, ids) == []
    want = expected_depth(len(ids), 10)
    if mode == "bottom_up":
        assert tree.height() == want
    else:  # topics are uneven: most leaves sit near log_M(N), a few deeper
        depth = tree.depths()
        assert np.mean([depth[tree.leaf_of(d)] for d in ids]) <= want + 1.5
        assert tree.height() <= 2 * want
    summaries = [tree.text[v] for v in tree.children[ROOT]]
    assert all(len(s) > 10 for s in summaries)
    # summary vectors are the embedded summaries, in the leaves' space
    v = tree.children[ROOT][0]
    assert np.allclose(tree.vectors[v], minilm.embed([tree.text[v]])[0], atol=1e-4)


def test_arrow_round_trip_and_contract(synth):
    from tasks.runtime.validation import validate

    ids, texts, vecs, topics = synth
    ids, texts, vecs = ids[:200], texts[:200], vecs[:200]
    tree = build_bottom_up("t", ids, texts, vecs, _offline(texts), None, BuildParams(max_branching=6),
                           space="synthetic@1")
    nodes, node_vecs = tree.to_tables("centroid")
    assert nodes.num_rows == len(tree.live_nodes())
    assert node_vecs.num_rows == nodes.num_rows - 200
    assert validate("tree_nodes/t", nodes).success
    assert validate("embeddings/tree-t", node_vecs).success
    again = Tree.from_tables(nodes, node_vecs, dict(zip(ids, vecs)), 6)
    assert check_invariants(again, ids) == []
    n2, v2 = again.to_tables("centroid")
    assert n2.sort_by("node_id").equals(nodes.sort_by("node_id"))
    leaf = again.leaf_of(ids[5])
    assert np.allclose(again.vectors[leaf], vecs[5])
    root_rows = [r for r in nodes.to_pylist() if r["depth"] == 0]
    assert len(root_rows) == 1 and root_rows[0]["n_leaves"] == 200 and root_rows[0]["parent_id"] is None


def test_duplicate_documents_are_refused(synth):
    ids, texts, vecs, _ = synth
    with pytest.raises(ValueError, match="unique"):
        build_bottom_up("t", [ids[0], ids[0]], texts[:2], vecs[:2], _offline(texts[:2]))


def test_levels_share_the_fan_out_so_the_root_is_not_starved():
    """ceil(n/M) groups per level left the root with whatever was over (2 children for 1,500
    documents at M = 10); spreading the fan-out gives every node, the root included, about
    n^(1/height) children."""
    from tasks.tree.cluster import level_sizes

    ids, texts, vecs, _ = synthetic_corpus(1500, n_topics=30, seed=3)
    tree = build_bottom_up("t", ids, texts, vecs, _offline(texts), None, BuildParams(max_branching=10))
    assert check_invariants(tree, ids) == [] and tree.height() == 4
    kids = [len(tree.children[v]) for v in tree.live_nodes() if not tree.is_leaf(v)]
    assert min(kids) >= 5 and max(kids) <= 8, (min(kids), max(kids))  # 1500^(1/4) = 6.2 everywhere
    assert len(tree.children[ROOT]) == level_sizes(1500, 10)[-1] == 6
    assert level_sizes(1000, 10) == [100, 10] and level_sizes(10, 10) == [] and level_sizes(4414, 10) == [542, 66, 8]


def test_summaries_high_in_the_tree_describe_their_documents():
    """A node's keyphrases come from the documents beneath it, so a top-level summary names words
    many of its documents share, not rare phrases of a few children's summaries."""
    ids, texts, vecs, topics = synthetic_corpus(1000, n_topics=25)
    tree = build_bottom_up("t", ids, texts, vecs, _offline(texts), None, BuildParams(max_branching=10))
    for v in tree.children[ROOT]:
        keys = tree.text[v].partition(SEP)[0].split(", ")
        under = [tree.text[leaf].lower() for leaf in tree.leaves_under(v)]
        share = [np.mean([k in t for t in under]) for k in keys]
        assert len(keys) == 5 and min(share) >= 0.1, (keys, share)  # a phrase of one document: 0.01


def test_node_vectors_summary_centroid_or_both():
    ids, texts, vecs, _ = synthetic_corpus(300, n_topics=10)
    embed = hashed_embedder()
    trees = {nv: build_bottom_up("t", ids, texts, vecs, _offline(texts), embed,
                                 BuildParams(max_branching=10, node_vectors=nv)) for nv in ("summary", "centroid", "both")}
    for nv, tree in trees.items():  # above the first level the trees differ: each is checked on its own nodes
        for v in [v for v in tree.live_nodes() if not tree.is_leaf(v) and v != ROOT][:20]:
            centroid = vecs[[ids.index(tree.doc_id[x]) for x in tree.leaves_under(v)]].sum(0)
            centroid /= np.linalg.norm(centroid)
            summary = embed([tree.text[v]])[0]
            want = {"centroid": centroid, "summary": summary, "both": summary + centroid}[nv]
            assert np.allclose(tree.vectors[v], want / np.linalg.norm(want), atol=1e-5), (nv, v)
