"""CLI command of the closed loop: `corpusforge evaluate` (the Prefect `evaluate` flow)."""

from flows.cli_output import print_table


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
    if str(args.format) in ("table", "OutputFormat.table"):
        print(f"{result['eval_set']}: {c['queries']} queries, {c['labels']} labels; run {result['run_id']} -> "
              f"{result['evaluations']}")
    print_table(rows, args.format)
    if args.format == "table":
        for v, m in result["models"].items():
            print(f"model {v}: {m['path']}")
    return 0


def register(app) -> None:
    from typing import Annotated, Optional

    import typer

    from flows.cli import CatalogOpt, ConfigOpt, FormatOpt, OutputFormat, QuietOpt, ns, quiet_progress

    def opt(name: str, help: str, kind=str):
        return Annotated[Optional[kind], typer.Option(name, help=help)]

    @app.command("evaluate")
    def evaluate_cmd(config: ConfigOpt = None, catalog: CatalogOpt = None,
                     qrels: opt("--qrels", "TREC qrels over the corpus (imported as judgments/<file stem>)") = None,
                     queries: opt("--queries", "evaluation queries, qid<TAB>text (default: the catalog's "
                                  "queries)") = None,
                     judge: opt("--judge", "a label set of the catalog as the qrels (judgments/<judge>)") = None,
                     export: opt("--export", "a sentence-transformers export folder to train on (default: the "
                                 "current one, written when missing)") = None,
                     variant: Annotated[Optional[list[str]], typer.Option(
                         "--variant", help="training data: export, in_batch, mined, judge_filtered or a policy set "
                         "of evaluate.policies; repeat")] = None,
                     ablation: Annotated[bool, typer.Option("--ablation", help="every variant of evaluate.variants "
                                                            "and evaluate.policies")] = False,
                     build: Annotated[bool, typer.Option("--build", help="run the build stages first (a no-op when "
                                                         "current)")] = False,
                     max_steps: opt("--max-steps", "override evaluate.train.max_steps", int) = None,
                     epochs: opt("--epochs", "override evaluate.train.epochs", float) = None,
                     batch_size: opt("--batch-size", "override evaluate.train.batch_size", int) = None,
                     model: opt("--model", "override evaluate.train.model (the base model)") = None,
                     format: FormatOpt = OutputFormat.table, quiet: QuietOpt = False) -> int:
        """Fine-tune a retriever on the exported corpus and evaluate base vs tuned (the `evaluate` flow)."""
        with quiet_progress(quiet):
            return cmd_evaluate(ns(config=config, catalog=catalog, qrels=qrels, queries=queries, judge=judge,
                                   export=export, variant=variant, ablation=ablation, build=build,
                                   max_steps=max_steps, epochs=epochs, batch_size=batch_size, model=model,
                                   format=format.value))
