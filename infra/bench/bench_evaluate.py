"""The closed loop on LLMJudge: build, fine-tune MiniLM on the exported corpus, evaluate on the
25 human-judged test queries (TREC DL 2023 passages).

    BENCH evaluate ndcg10_base=<a> ndcg10_tuned=<b> ndcg10_gain=<b-a> recall100_base=.. recall100_tuned=..
                   train_pairs=<n> train_s=<t> ...

1. `build` on the 4,414 LLMJudge passages with the offline defaults: extractive synthetic queries,
   the offline judge (judge.enabled) and judge-filtered hard negatives
   (negatives.judge_filter.enabled). Identical passages are one document (content addresses);
   the human qrels of a duplicate's docid are moved to the document it became (highest grade).
2. `evaluate`: the sentence-transformers export of those negatives, MiniLM fine-tuned with
   SentenceTransformerTrainer + MultipleNegativesRankingLoss (evaluate.train defaults: one epoch,
   bounded steps), base and tuned scored with ir_measures on the human qrels (nDCG@10 graded,
   Recall@100 and MRR@10 at grade >= 1, trec_eval's default).

The baseline (the base model) is measured in the same run, on the same corpus and queries.
BENCH_EVALUATE_ABLATION=1 also runs the ablation (in-batch only, mined, judge-filtered and the
policy set `margin`: relative margin 0.05) and prints its table. Sizes shrink with
BENCH_EVALUATE_PASSAGES (all), BENCH_EVALUATE_MAX_STEPS (evaluate.train.max_steps),
BENCH_EVALUATE_JUDGE_TOP_K (judge.top_k, default 10); BENCH_EVALUATE_DIR (.corpusforge/bench/evaluate)
keeps the catalog, so a second run reuses the build.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "llmjudge" / "data"


def _norm(text: str) -> str:
    return " ".join(text.split())


def write_inputs(work: Path, limit: int | None) -> tuple[Path, Path]:
    """The passages as a manifest and the topics; returns (config, topics)."""
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    lines = (DATA / "llm4eval_test_passages_2024.jsonl").read_text().splitlines()[:limit]
    with open(corpus / "documents.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            p = json.loads(line)
            f.write(json.dumps({"id": p["docid"], "text": p["doc"]}) + "\n")
    steps = os.environ.get("BENCH_EVALUATE_MAX_STEPS")
    top_k = os.environ.get("BENCH_EVALUATE_JUDGE_TOP_K")
    cfg = {"name": "llmjudge", "corpus": {"root": str(corpus), "sources": [{"kind": "manifest", "path": "documents.jsonl"}]},
           "workdir": str(work / "work"), "flow": {"retries": 0},
           "caption": {"enabled": False}, "tree": {"enabled": False},
           # one batch: the offline judge embeds each distinct passage once per batch (a resource, so the
           # judge's labels are those of the default batch size)
           "judge": {"enabled": True, "batch_size": 65536, **({"top_k": int(top_k)} if top_k else {})},
           "negatives": {"judge_filter": {"enabled": True}},
           "export": {"out": str(work / "exports")},
           "evaluate": {"queries": str(DATA / "llm4eval_query_2024.txt"), "qrels": str(work / "human_test.qrels"),
                        "policies": {"margin": {"relative_margin": 0.05}},
                        **({"train": {"max_steps": int(steps)}} if steps else {})}}
    import yaml

    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work / "config.yaml", DATA / "llm4eval_query_2024.txt"


def write_qrels(work: Path, catalog: str) -> Path:
    """The human test qrels, each docid mapped to the document its passage became."""
    from tasks.runtime.catalog import Catalog

    docs = Catalog(catalog).query("SELECT source_id, text FROM documents").to_pylist()
    known = {d["source_id"] for d in docs}
    by_text = {_norm(d["text"]): d["source_id"] for d in docs}
    alias = {}
    for line in (DATA / "llm4eval_test_passages_2024.jsonl").read_text().splitlines():
        p = json.loads(line)
        if p["docid"] not in known and _norm(p["doc"]) in by_text:
            alias[p["docid"]] = by_text[_norm(p["doc"])]
    grades: dict[tuple[str, str], int] = {}
    for line in (DATA / "llmjudge_test_qrel_idx.txt").read_text().splitlines():
        q, _, d, g = line.split()
        key = (q, alias.get(d, d))
        grades[key] = max(grades.get(key, 0), int(g))
    path = work / "human_test.qrels"
    path.write_text("".join(f"{q} 0 {d} {g}\n" for (q, d), g in sorted(grades.items())))
    return path


def main() -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.build import build
    from flows.evaluate import comparison_markdown, evaluate_flow
    from schemas.config import load_config

    work = Path(os.environ.get("BENCH_EVALUATE_DIR", REPO / ".corpusforge" / "bench" / "evaluate")).resolve()
    limit = int(os.environ["BENCH_EVALUATE_PASSAGES"]) if os.environ.get("BENCH_EVALUATE_PASSAGES") else None
    config, _ = write_inputs(work, limit)
    with prefect_test_harness(server_startup_timeout=180):
        t0 = time.perf_counter()
        built = build(config_path=str(config))
        build_s = time.perf_counter() - t0
        write_qrels(work, load_config(config).catalog_path)
        t0 = time.perf_counter()
        result = evaluate_flow(config_path=str(config))
        evaluate_s = time.perf_counter() - t0
        rows = {r["variant"]: r for r in result["results"]}
        base, tuned = rows["base"], rows["export"]
        model = result["models"]["export"]
        print(f"BENCH evaluate ndcg10_base={base['ndcg_10']:.4f} ndcg10_tuned={tuned['ndcg_10']:.4f} "
              f"ndcg10_gain={tuned['ndcg_10'] - base['ndcg_10']:+.4f} recall100_base={base['recall_100']:.4f} "
              f"recall100_tuned={tuned['recall_100']:.4f} mrr10_base={base['mrr_10']:.4f} "
              f"mrr10_tuned={tuned['mrr_10']:.4f} train_pairs={model['train_pairs']} train_s={model['train_s']:.1f} "
              f"train_steps={model['train_steps']} p={tuned['ndcg_10_p'] if tuned['ndcg_10_p'] is not None else 'na'} "
              f"queries={base['queries']} documents={built['datasets']['documents']['rows']} "
              f"build_s={build_s:.0f} evaluate_s={evaluate_s:.0f}", flush=True)
        if os.environ.get("BENCH_EVALUATE_ABLATION") == "1":
            t0 = time.perf_counter()
            ablation = evaluate_flow(config_path=str(config), ablation=True)
            print(f"# ablation in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            print(comparison_markdown(ablation), flush=True)


if __name__ == "__main__":
    main()
