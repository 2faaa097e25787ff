"""Tree search vs flat dense retrieval on LLMJudge (4,414 passages, 25 test queries, human qrels).

    .venv/bin/python -m infra.bench.eval_tree_llmjudge [--configs bottom_up:10:summary ...] [--sample N --seeds K]

Both retrievers use the same MiniLM embeddings: flat dense is exact inner-product search (FAISS
IndexFlatIP) over every passage; tree search walks a LATTICE tree with the embedding scorer and
at most 1 + B·(N−1) = 39 scorer calls per query. nDCG@10 and Recall@100 come from ir_measures
(graded human qrels; Recall counts grade ≥ 1 as relevant, trec_eval's default). Passage vectors
are cached under .corpusforge/cache (the first run embeds 4,414 passages: a few minutes on CPU).
`--sample N` builds the trees (and the flat index) over N passages drawn at random, K times, so a
corpus size whose root used to get 2 children (N = 1,500 at M = 10) is measured too. Prints the
table and one `BENCH tree_llmjudge_<config> ...` line per tree with its ratios to flat search.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "llmjudge" / "data"
CACHE = ROOT / ".corpusforge" / "cache"


def load(data: Path = DATA):
    passages = [json.loads(line) for line in open(data / "llm4eval_test_passages_2024.jsonl", encoding="utf-8")]
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in open(data / "llmjudge_test_qrel_idx.txt"):
        qid, _, doc, grade = line.split()
        qrels[qid][doc] = int(grade)
    topics = dict(line.rstrip("\n").split("\t", 1) for line in open(data / "llm4eval_query_2024.txt") if line.strip())
    queries = {q: topics[q] for q in sorted(qrels)}
    return [p["docid"] for p in passages], [p["doc"] for p in passages], queries, dict(qrels)


def embed_passages(texts: list[str], embedder) -> np.ndarray:
    key = hashlib.sha256((embedder.name + "\0" + "\0".join(texts)).encode()).hexdigest()[:16]
    path = CACHE / f"llmjudge-{key}.npy"
    if path.exists():
        return np.load(path)
    vecs = embedder.embed(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def evaluate(run: dict[str, list[tuple[str, float]]], qrels: dict) -> dict:
    import ir_measures
    from ir_measures import R, nDCG

    q = [ir_measures.Qrel(qid, d, g) for qid, docs in qrels.items() for d, g in docs.items()]
    r = [ir_measures.ScoredDoc(qid, d, s) for qid, hits in run.items() for d, s in hits]
    res = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], q, r)
    return {"ndcg10": res[nDCG @ 10], "recall100": res[R @ 100]}


def flat_dense(ids, vecs, qvecs, qids, k=100):
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, np.float32))
    scores, idx = index.search(np.ascontiguousarray(qvecs, np.float32), k)
    return {q: [(ids[j], float(s)) for s, j in zip(srow, irow)] for q, srow, irow in zip(qids, scores, idx)}


def tree_run(ids, texts, vecs, queries, qvecs, embedder, mode: str, m: int, node_vectors: str, k: int = 100):
    from tasks.tree.build import BuildParams, build_bottom_up, build_top_down
    from tasks.tree.scorers import EmbeddingScorer
    from tasks.tree.search import SearchParams, search
    from tasks.tree.summarize import ExtractiveSummarizer, TermStats

    t0 = time.perf_counter()
    build = build_bottom_up if mode == "bottom_up" else build_top_down
    tree = build("llmjudge", ids, texts, vecs, ExtractiveSummarizer(TermStats.of(texts)),
                 embedder.embed if node_vectors in ("summary", "both") else None,
                 BuildParams(max_branching=m, node_vectors=node_vectors), space=embedder.name)
    build_s = time.perf_counter() - t0
    scorer = EmbeddingScorer(embedder.embed)
    for q, v in zip(queries, qvecs):
        scorer._cache[queries[q]] = v / np.linalg.norm(v)
    run, calls, scored = {}, [], []
    t0 = time.perf_counter()
    for q, text in queries.items():
        result = search(tree, text, scorer, SearchParams(), k=k)
        run[q] = [(h.doc_id, h.score) for h in result.hits]
        calls.append(result.scorer_calls)
        scored.append(len(result.calibration.nodes) if result.calibration else 0)
    return run, {"build_s": build_s, "search_s_per_query": (time.perf_counter() - t0) / len(queries),
                 "calls": float(np.mean(calls)), "scored": float(np.mean(scored)), "height": tree.height(),
                 "root": len(tree.children[0])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["bottom_up:10:summary", "bottom_up:10:centroid",
                                                     "bottom_up:10:both", "bottom_up:20:both", "top_down:10:both"],
                    help="mode:M:node_vectors for each tree")
    ap.add_argument("--sample", type=int, help="build over this many passages drawn at random (qrels restricted)")
    ap.add_argument("--seeds", type=int, default=1, help="how many random samples with --sample")
    args = ap.parse_args(argv)
    if args.sample:
        return sampled(args)

    from tasks.backends.embedders import minilm

    ids, texts, queries, qrels = load()
    embedder = minilm()
    t0 = time.perf_counter()
    vecs = embed_passages(texts, embedder)
    qids = list(queries)
    qvecs = embedder.embed([queries[q] for q in qids])
    print(f"# {len(ids)} passages, {len(qids)} test queries, {sum(len(v) for v in qrels.values())} human qrels; "
          f"vectors ready in {time.perf_counter() - t0:.0f}s", flush=True)
    rows = []
    flat = evaluate(flat_dense(ids, vecs, qvecs, qids), qrels)
    rows.append(("flat dense (FAISS IndexFlatIP, exact)", flat, "—", str(len(ids)), "—"))
    for spec in args.configs:
        mode, m, nv = spec.split(":")
        run, info = tree_run(ids, texts, vecs, queries, qvecs, embedder, mode, int(m), nv)
        metrics = evaluate(run, qrels)
        label = (f"tree search, {mode.replace('_', '-')}, M={m}, {nv} vectors (height {info['height']}, "
                 f"{info['root']} children at the root)")
        rows.append((label, metrics, f"{info['calls']:.0f}", f"{info['scored']:.0f}", f"{info['build_s']:.0f}s"))
        print(f"# {label}: {metrics} calls={info['calls']:.1f} scored={info['scored']:.0f} "
              f"build={info['build_s']:.1f}s search={info['search_s_per_query'] * 1000:.0f}ms/query", flush=True)
    print()
    print("| retriever | nDCG@10 | Recall@100 | scorer calls / query | items scored / query | build |")
    print("|---|---|---|---|---|---|")
    for label, m, calls, scored, build in rows:
        print(f"| {label} | {m['ndcg10']:.4f} | {m['recall100']:.4f} | {calls} | {scored} | {build} |")
    for (label, m, calls, _, _), spec in zip(rows[1:], args.configs):
        print(f"BENCH tree_llmjudge_{spec.replace(':', '_')} ndcg10={m['ndcg10']:.4f} recall100={m['recall100']:.4f} "
              f"ndcg10_ratio={m['ndcg10'] / flat['ndcg10']:.3f} recall100_ratio={m['recall100'] / flat['recall100']:.3f} "
              f"flat_ndcg10={flat['ndcg10']:.4f} flat_recall100={flat['recall100']:.4f} calls={calls} docs={len(ids)}")


def sampled(args) -> None:
    """Flat and tree search over random passage samples; mean metrics and ratios over the samples."""
    from tasks.backends.embedders import minilm

    ids, texts, queries, qrels = load()
    embedder = minilm()
    vecs = embed_passages(texts, embedder)
    qids = list(queries)
    qvecs = embedder.embed([queries[q] for q in qids])
    results: dict[str, list] = {"flat": []} | {c: [] for c in args.configs}
    for seed in range(args.seeds):
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), args.sample, replace=False))
        s_ids, s_texts, s_vecs = [ids[i] for i in pick], [texts[i] for i in pick], vecs[pick]
        keep = set(s_ids)
        s_qrels = {q: {d: g for d, g in docs.items() if d in keep} for q, docs in qrels.items()}
        s_qrels = {q: docs for q, docs in s_qrels.items() if any(g > 0 for g in docs.values())}
        s_queries = {q: queries[q] for q in s_qrels}
        s_qvecs = qvecs[[qids.index(q) for q in s_queries]]
        results["flat"].append(evaluate(flat_dense(s_ids, s_vecs, s_qvecs, list(s_queries)), s_qrels))
        for spec in args.configs:
            mode, m, nv = spec.split(":")
            run, info = tree_run(s_ids, s_texts, s_vecs, s_queries, s_qvecs, embedder, mode, int(m), nv)
            results[spec].append(evaluate(run, s_qrels) | {"root": info["root"], "height": info["height"]})
    flat = {k: float(np.mean([r[k] for r in results["flat"]])) for k in ("ndcg10", "recall100")}
    print(f"# {args.seeds} samples of {args.sample} passages; flat: {flat}")
    for spec in args.configs:
        r = {k: float(np.mean([x[k] for x in results[spec]])) for k in ("ndcg10", "recall100", "root", "height")}
        print(f"BENCH tree_llmjudge_{spec.replace(':', '_')}_n{args.sample} ndcg10={r['ndcg10']:.4f} "
              f"recall100={r['recall100']:.4f} ndcg10_ratio={r['ndcg10'] / flat['ndcg10']:.3f} "
              f"recall100_ratio={r['recall100'] / flat['recall100']:.3f} root_children={r['root']:.1f} "
              f"height={r['height']:.0f} samples={args.seeds}")


if __name__ == "__main__":
    main()
