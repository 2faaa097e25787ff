"""Benchmarks of the semantic tree on synthetic corpora (no model: random unit vectors, made-up text).

    BENCH tree_search calls_per_query_1k=.. calls_per_query_100k=.. calls_per_query_growth=..
                      build_s_10k=.. build_s_100k=.. build_growth=.. (10 = linear), and the same in CPU seconds
    BENCH tree_insert fraction=.. insert_s=.. rebuild_s=.. docs=.. touched_per_insert=..

Search cost must not grow with the corpus (goal: growth ≤ 1.05); the build should grow about
linearly; inserting 1% of the documents should cost a small fraction of rebuilding. Sizes can be
changed with TREE_BENCH_LARGE (100000), TREE_BENCH_MEDIUM (10000), TREE_BENCH_SMALL (1000),
TREE_BENCH_DIM (128), TREE_BENCH_QUERIES (10), TREE_BENCH_M (10).
"""
from __future__ import annotations

import os
import time

import numpy as np

from tasks.tree.build import BuildParams, build_bottom_up
from tasks.tree.insert import insert_documents
from tasks.tree.scorers import EmbeddingScorer
from tasks.tree.search import SearchParams, search
from tasks.tree.summarize import ExtractiveSummarizer, TermStats

WORDS = [a + b + c for a in ("ka", "lo", "mi", "ru", "te", "shi", "no", "va") for b in ("pe", "zu", "ri", "da")
         for c in ("fo", "ge", "hu", "bi", "an")]


def corpus(n: int, dim: int, seed: int = 0, n_topics: int | None = None):
    """Topical unit vectors and texts: each topic has its own words and a direction."""
    rng = np.random.default_rng(seed)
    n_topics = n_topics or max(8, n // 200)
    topics = rng.integers(n_topics, size=n)
    centres = rng.normal(size=(n_topics, dim)).astype(np.float32)
    vecs = centres[topics] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vocab = rng.integers(len(WORDS), size=(n_topics, 12))
    picks = rng.integers(12, size=(n, 10))
    common = rng.integers(len(WORDS), size=(n, 3))
    texts = [" ".join([WORDS[vocab[t, j]] for j in picks[i]] + [WORDS[j] for j in common[i]]) + "."
             for i, t in enumerate(topics)]
    return [f"d{i:07d}" for i in range(n)], texts, vecs


def build(n: int, dim: int, m: int, seed: int = 0, repeats: int = 1):
    """The tree, its summarizer, (best wall seconds, CPU seconds of that run) and the corpus.

    The machine is shared, so wall time is the best of `repeats` runs and CPU time is reported
    beside it (it is less sensitive to other processes)."""
    ids, texts, vecs = corpus(n, dim, seed)
    best = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        summarizer = ExtractiveSummarizer(TermStats.of(texts))
        tree = build_bottom_up(f"bench{n}", ids, texts, vecs, summarizer, None,
                               BuildParams(max_branching=m, node_vectors="centroid"))
        took = (time.perf_counter() - t0, time.process_time() - c0)
        best = took if best is None or took[0] < best[0] else best
    return tree, summarizer, best, (ids, texts, vecs)


def _timed_build(ids, texts, vecs, m: int) -> float:
    t0 = time.perf_counter()
    build_bottom_up("rebuild", ids, texts, vecs, ExtractiveSummarizer(TermStats.of(texts)), None,
                    BuildParams(max_branching=m, node_vectors="centroid"))
    return time.perf_counter() - t0


def calls_per_query(tree, vecs: np.ndarray, n_queries: int, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vecs), n_queries, replace=False)
    queries = {f"q{i}": vecs[j] + 0.3 * rng.normal(size=vecs.shape[1]).astype(np.float32) for i, j in enumerate(picks)}
    scorer = EmbeddingScorer(lambda qs: np.stack([queries[q] for q in qs]))
    calls = [search(tree, q, scorer, SearchParams(), k=100).scorer_calls for q in queries]
    return float(np.mean(calls))


def main() -> None:
    env = os.environ.get
    large, medium, small = int(env("TREE_BENCH_LARGE", 100_000)), int(env("TREE_BENCH_MEDIUM", 10_000)), \
        int(env("TREE_BENCH_SMALL", 1_000))
    dim, n_queries, m = int(env("TREE_BENCH_DIM", 128)), int(env("TREE_BENCH_QUERIES", 10)), int(env("TREE_BENCH_M", 10))

    tree_s, _, _, (_, _, vecs_s) = build(small, dim, m)
    calls_small = calls_per_query(tree_s, vecs_s, n_queries)
    tree_m, summ_m, (build_medium, cpu_medium), _ = build(medium, dim, m, repeats=3)
    tree_l, _, (build_large, cpu_large), (_, _, vecs_l) = build(large, dim, m)
    calls_large = calls_per_query(tree_l, vecs_l, n_queries)
    del tree_l, vecs_l
    print(f"BENCH tree_search calls_per_query_1k={calls_small:.1f} calls_per_query_100k={calls_large:.1f} "
          f"calls_per_query_growth={calls_large / calls_small:.3f} build_s_10k={build_medium:.2f} "
          f"build_s_100k={build_large:.2f} build_growth={build_large / build_medium:.2f} "
          f"build_cpu_s_10k={cpu_medium:.2f} build_cpu_s_100k={cpu_large:.2f} "
          f"build_cpu_growth={cpu_large / cpu_medium:.2f} sizes={small}/{medium}/{large} dim={dim} M={m} "
          f"max_calls={SearchParams().max_calls}", flush=True)

    # insert 1% new documents into the medium tree vs rebuilding the grown corpus from scratch
    extra = medium // 100
    ids, texts, vecs = corpus(medium + extra, dim)  # same seed: the first `medium` are the tree's documents
    t0 = time.perf_counter()
    report = insert_documents(tree_m, ids[medium:], texts[medium:], vecs[medium:], summ_m, None,
                              BuildParams(max_branching=m, node_vectors="centroid"))
    insert_s = time.perf_counter() - t0
    rebuild_s = min(_timed_build(ids, texts, vecs, m) for _ in range(2))
    print(f"BENCH tree_insert fraction={insert_s / rebuild_s:.4f} insert_s={insert_s:.3f} rebuild_s={rebuild_s:.2f} "
          f"docs={medium}+{report.inserted} touched_per_insert={report.touched_per_change:.2f} "
          f"splits={report.splits}", flush=True)


if __name__ == "__main__":
    main()
