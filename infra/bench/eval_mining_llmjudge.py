"""False negatives of hard negative mining on LLMJudge: cosine-only windows and margins against the
judge filter with trained judges (a feature judge, a cross-encoder), at the yield of `top`.

    .venv/bin/python -m infra.bench.eval_mining_llmjudge [--workdir DIR] [--judge llmjudge-human-odd]

The corpus is the LLMJudge passages (de-duplicated by text, as the corpus stores them), the
queries the even-numbered test queries (the judge was trained on the odd ones), each with one
known positive: a human grade-3 passage, picked by a hash of its id (not by the retriever). A
mined negative is a false negative when humans graded it >= 2 (unjudged passages count as not
relevant, as in TREC). Every configuration mines `--negatives` per query with MiniLM from a FAISS
flat index through the negatives package; a cosine-only configuration competes only when it
yields as many negatives as `top`. The judge filter runs as the negatives stage runs it: the
judge stage grades exactly the pairs the filter needs (tasks.negatives.judging), here with the
trained judge from infra/bench/eval_judge_llmjudge.py (run that first; it fills --workdir).
Prints a table and `BENCH mining_llmjudge ...`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "llmjudge" / "data"


def corpus():
    """Canonical passages (one id per distinct text), human grades on them, topics."""
    from infra.bench.eval_tree_llmjudge import load

    ids, texts, _, _ = load()
    canonical: dict[str, str] = {}
    alias = {d: canonical.setdefault(t, d) for d, t in zip(ids, texts)}
    grades: dict[tuple[str, str], int] = {}
    for line in open(DATA / "llmjudge_test_qrel_idx.txt"):
        q, _, d, g = line.split()
        grades[(q, alias[d])] = max(grades.get((q, alias[d]), 0), int(g))
    topics = dict(line.rstrip("\n").split("\t", 1) for line in open(DATA / "llm4eval_query_2024.txt") if line.strip())
    return ids, texts, canonical, grades, topics


def known_positive(q: str, docs: list[str]) -> str:
    return min(docs, key=lambda d: hashlib.sha256(f"{q}/{d}".encode()).hexdigest())


class Mined(NamedTuple):
    """One configuration's negatives against the human grades."""

    rate: float  # share of mined negatives humans graded >= 2
    bad: int
    total: int
    rank: float  # mean retrieval rank: how hard they are (a deep enough window has no false negatives)


def false_negative_rate(negatives: pa.Table, grades: dict) -> Mined:
    """The false negatives among the mined negatives, and how hard the negatives are."""
    got = [grades.get((q, d), 0) for q, d in zip(negatives["query_id"].to_pylist(), negatives["neg_doc_id"].to_pylist())]
    bad = sum(g >= 2 for g in got)
    rank = float(np.mean(negatives["rank"].to_numpy())) if got else float("nan")
    return Mined(bad / len(got) if got else float("nan"), bad, len(got), rank)


def cosine_only_configs(n: int) -> dict[str, dict]:
    out = {"top": {}}
    out |= {f"window {m}-{m + n}": {"range_min": m} for m in (5, 10, 20, 30, 40, 50, 75, 100, 150)}
    out |= {f"absolute margin {m:g}": {"absolute_margin": m, "range_max": 300} for m in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)}
    out |= {f"relative margin {r:g}": {"relative_margin": r, "range_max": 300} for r in (0.05, 0.1, 0.2, 0.3, 0.4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=str(ROOT / ".corpusforge" / "eval-llmjudge"))
    ap.add_argument("--judge", default="llmjudge-human-odd-features,llmjudge-human-odd",
                    help="trained judges in the workdir's catalog, comma-separated (the first is the BENCH line's)")
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--split", default="even", choices=["even", "odd", "all"], help="the queries mined")
    args = ap.parse_args(argv)

    from infra.bench.eval_queries_llmjudge import flat_index
    from infra.bench.eval_tree_llmjudge import embed_passages
    from schemas.config import NegativesConfig, catalog_config
    from schemas.tables import DOCUMENTS
    from tasks.backends.embedders import minilm
    from tasks.judge.train import in_split
    from tasks.negatives.judging import judge_what_mining_needs
    from tasks.negatives.mine import mine
    from tasks.negatives.plan import plan_mining
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.inputs import Inputs
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.storage import DataRoot
    from tasks.runtime.write import seed

    ids, texts, canonical, grades, topics = corpus()
    embedder = minilm()
    all_vecs = embed_passages(texts, embedder)
    row = {d: i for i, d in enumerate(ids)}
    # the catalog names documents by 32-hex ids (LLMJudge's docids stay their source ids)
    ours = {d: hashlib.md5(d.encode()).hexdigest() for d in canonical.values()}
    grades = {(q, ours[d]): g for (q, d), g in grades.items()}
    doc_ids = [ours[d] for d in canonical.values()]
    index = flat_index(all_vecs[[row[d] for d in canonical.values()]], doc_ids, embedder.name)
    qids = sorted({q for q, _ in grades if in_split(q, args.split)}, key=lambda q: int(q[1:]))
    by_q = defaultdict(list)
    for (q, d), g in grades.items():
        if g == 3:
            by_q[q].append(d)
    qids = [q for q in qids if by_q[q]]
    positives = pa.table({"query_id": qids, "doc_id": [known_positive(q, sorted(by_q[q])) for q in qids]})
    queries = pa.table({"query_id": qids, "text": [topics[q] for q in qids]})
    qvecs = embedder.embed(queries["text"].to_pylist())
    n = args.negatives
    print(f"# {len(doc_ids)} passages, {len(qids)} {args.split} queries, one grade-3 positive each, {n} negatives",
          flush=True)

    rows = []
    for label, over in cosine_only_configs(n).items():
        res = mine(queries, qvecs, positives, index, NegativesConfig(num_negatives=n, **over))
        rows.append((label, false_negative_rate(res.negatives, grades)))
    top_yield = rows[0][1].total
    eligible = [r for r in rows[1:] if r[1].total == top_yield]
    best = min(eligible, key=lambda r: r[1].rate) if eligible else None

    # the judge filter, judging through the judge stage into the workdir's catalog
    work = Path(args.workdir)
    base = catalog_config(work / "catalog.duckdb")
    catalog = Catalog(base.catalog_path)
    names = [j for j in args.judge.split(",") if j and catalog.current(f"judge_models/{j}") is not None]
    if not names:
        raise SystemExit(f"no trained judge '{args.judge}' in {base.catalog_path}: run "
                         "`python -m infra.bench.eval_judge_llmjudge` first")
    if catalog.current("documents") is None:
        docs = pa.Table.from_pylist([{"doc_id": ours[d], "modality": "text", "text": t, "source": "llmjudge",
                                      "source_id": d} for t, d in canonical.items()], schema=DOCUMENTS)
        seed(catalog, DataRoot(base.data_root_uri), "documents", docs)
    judged_rows = {}
    trained_judges = [(f"judge filter, trained {kind_of(catalog, base, j)} {j}",
                       {"backend": kind_of(catalog, base, j), "model": j}) for j in names]
    for label, judge in (*trained_judges, ("judge filter, cosine judge (offline)", {"backend": "offline"})):
        cfg = base.model_copy(update={
            "judge": base.judge.model_copy(update=judge | {"local_below": 10 ** 6}),
            "negatives": NegativesConfig(num_negatives=n, judge_filter={"enabled": True})})
        t0 = time.perf_counter()
        with open_run(cfg, "eval-mining", quiet=True) as run:
            inputs = Inputs(cfg, run=run)
            plan = plan_mining(cfg.negatives, 1)
            judgments, report = judge_what_mining_needs(inputs, cfg, queries, qvecs, positives, index, plan, None)
        res = mine(queries, qvecs, positives, index, cfg.negatives, judgments=judgments)
        judged_rows[label] = (false_negative_rate(res.negatives, grades), report, time.perf_counter() - t0)
    # the human labels themselves as the judge: what a perfect judge would do
    human = pa.table({"query_id": [q for q, _ in grades], "doc_id": [d for _, d in grades],
                      "judge": ["human"] * len(grades), "grade": pa.array(list(grades.values()), pa.int8()),
                      "expected_grade": pa.array([None] * len(grades), pa.float32()), "status": ["ok"] * len(grades)})
    oracle = mine(queries, qvecs, positives, index,
                  NegativesConfig(num_negatives=n, judge_filter={"enabled": True, "unjudged": "keep"}), judgments=human)
    o = false_negative_rate(oracle.negatives, grades)

    print()
    trained, trained_report, _ = judged_rows[trained_judges[0][0]]
    # at the judge's hardness: the cosine-only configurations whose negatives rank no deeper on average
    as_hard = [r for r in eligible if r[1].rank <= trained.rank]
    best_hard = min(as_hard, key=lambda r: r[1].rate) if as_hard else None
    print("| mining | negatives | false negatives (human grade >= 2) | rate | mean rank |")
    print("|---|---|---|---|---|")
    def row(label: str, m: Mined) -> str:
        return f"| {label} | {m.total} | {m.bad} | {m.rate:.3f} | {m.rank:.1f} |"

    for label, m in rows:
        mark = " (best cosine-only at the yield of top)" if best and label == best[0] else ""
        mark += " (best cosine-only as hard as the judge filter)" if best_hard and label == best_hard[0] else ""
        print(row(label + mark, m))
    for label, (m, report, secs) in judged_rows.items():
        print(row(f"{label} ({report['pairs_asked']} pairs judged in {report['rounds']} rounds, {secs:.0f}s)", m))
    print(row("judge filter, human labels (oracle)", o))
    nan = float("nan")
    print(f"BENCH mining_llmjudge top_fn_rate={rows[0][1].rate:.4f} best_cosine_fn_rate={best[1].rate if best else nan:.4f} "
          f"best_cosine={json.dumps(best[0] if best else None).replace(' ', '_')} judge_fn_rate={trained.rate:.4f} "
          f"judge_yield={trained.total} top_yield={top_yield} "
          f"ratio_judge_vs_best_cosine={trained.rate / best[1].rate if best and best[1].rate else nan:.3f} "
          f"judge_mean_rank={trained.rank:.1f} best_cosine_as_hard_fn_rate={best_hard[1].rate if best_hard else nan:.4f} "
          f"best_cosine_as_hard={json.dumps(best_hard[0] if best_hard else None).replace(' ', '_')} "
          f"cosine_judge_fn_rate={judged_rows['judge filter, cosine judge (offline)'][0].rate:.4f} "
          f"judge={names[0]} oracle_fn_rate={o.rate:.4f} pairs_judged={trained_report['pairs_asked']} queries={len(qids)}")
    return {"rows": rows, "best": best, "judged": judged_rows, "oracle": o.rate}


def kind_of(catalog, cfg, name: str) -> str:
    """The backend of a trained judge: its manifest's kind (a cross-encoder when it has none)."""
    from tasks.judge.cross_encoder import read_manifest, resolve_model

    folder, _ = resolve_model(cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"model": name})}))
    return read_manifest(folder).get("kind") or "cross_encoder"


if __name__ == "__main__":
    main()
