"""CLI command of the closed loop: `corpusforge evaluate` (the Prefect `evaluate` flow)."""
from __future__ import annotations

from flows.cli import print_table


def cmd_evaluate(args) -> int:
    from flows.evaluate import evaluate_flow

    train = {k: v for k, v in {"max_steps": args.max_steps, "epochs": args.epochs, "batch_size": args.batch_size,
                               "model": args.model}.items() if v is not None}
    try:
        result = evaluate_flow(config_path=args.config, catalog=args.catalog, export=args.export,
                               variants=args.variant, ablation=args.ablation, build=args.build, qrels=args.qrels,
                               queries=args.queries, judge=args.judge, train=train or None)
    except (LookupError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    rows = [{"variant": r["variant"], "role": r["role"], "nDCG@10": r["ndcg_10"], "Recall@100": r["recall_100"],
             "MRR@10": r["mrr_10"], "ΔnDCG@10": r["ndcg_10_gain"], "p": r["ndcg_10_p"],
             "train_pairs": r["train_pairs"]} for r in result["results"]]
    c = result["counts"]
    if args.format == "table":
        print(f"{result['eval_set']}: {c['queries']} queries, {c['labels']} labels; run {result['run_id']} -> "
              f"{result['evaluations']}")
    print_table(rows, args.format)
    if args.format == "table":
        for v, m in result["models"].items():
            print(f"model {v}: {m['path']}")
    return 0


def register(sub) -> None:
    e = sub.add_parser("evaluate", help="fine-tune a retriever on the exported corpus and evaluate base vs tuned "
                       "(the `evaluate` flow)")
    e.add_argument("--config", help="YAML run config (its evaluate section); or --catalog")
    e.add_argument("--catalog", help="DuckDB catalog file (default: the config's)")
    e.add_argument("--qrels", help="TREC qrels over the corpus (imported as judgments/<file stem>)")
    e.add_argument("--queries", help="evaluation queries, qid<TAB>text (default: the catalog's queries)")
    e.add_argument("--judge", help="a label set of the catalog as the qrels (judgments/<judge>)")
    e.add_argument("--export", help="a sentence-transformers export folder to train on (default: the current one, "
                   "written when missing)")
    e.add_argument("--variant", action="append", help="training data: export, in_batch, mined, judge_filtered or a "
                   "policy set of evaluate.policies (repeatable)")
    e.add_argument("--ablation", action="store_true", help="every variant of evaluate.variants and evaluate.policies")
    e.add_argument("--build", action="store_true", help="run the build stages first (a no-op when current)")
    e.add_argument("--max-steps", type=int, help="override evaluate.train.max_steps")
    e.add_argument("--epochs", type=float, help="override evaluate.train.epochs")
    e.add_argument("--batch-size", type=int, help="override evaluate.train.batch_size")
    e.add_argument("--model", help="override evaluate.train.model (the base model)")
    e.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    e.set_defaults(func=cmd_evaluate)
