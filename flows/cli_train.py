"""CLI command for trained judges: `train-judge`.

    corpusforge train-judge --labels LABEL_SET_OR_QRELS [--name NAME] [--split all|odd|even]
                            [--queries TOPICS] [--docs PASSAGES] [--kind cross_encoder|features]
                            [--prior cosine|none] [--epochs N] [--base-model M] ...
"""

import json

from flows.cli_output import error_text


def cmd_train_judge(args) -> int:
    from flows.train_judge import train_judge_flow

    training = {"kind": args.kind, "prior": args.prior, "epochs": args.epochs, "base_model": args.base_model,
                "learning_rate": args.learning_rate, "warmup_ratio": args.warmup_ratio, "max_length": args.max_length,
                "freeze_layers": args.freeze_layers, "batch_size": args.batch_size, "seed": args.seed}
    try:
        summary = train_judge_flow(labels=args.labels, name=args.name, split=args.split, queries=args.queries,
                                   docs=args.docs, catalog=args.catalog, config_path=args.config, training=training)
    except (KeyError, LookupError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"train-judge: {error_text(e)}") from None
    print(json.dumps(summary, indent=2, default=str))
    backend = summary.get("kind") or "cross_encoder"
    print(f"use it with:  judge: {{backend: {backend}, model: {summary['model']}}}  "
          f"(or corpusforge judge ... --backend {backend} --model {summary['model']})")
    return 0


def register(app) -> None:
    from typing import Annotated, Optional

    import typer

    from flows.cli import CatalogOpt, ConfigOpt, QuietOpt, ns, quiet_progress
    from flows.cli_choices import JudgeKind, JudgePrior, Split

    def opt(name: str, help: str, kind=str):
        return Annotated[Optional[kind], typer.Option(name, help=help)]

    @app.command("train-judge")
    def train_judge_cmd(labels: Annotated[str, typer.Option("--labels", help="a label set in the catalog (judge "
                                                            "name), or a qrels file to import first")],
                        name: opt("--name", "the trained judge's name: dataset judge_models/NAME (default: "
                                  "labels[-split])") = None,
                        split: Annotated[Split, typer.Option("--split", help="train on the queries whose id ends in "
                                                             "an odd / even number (LLMJudge: odd), or all")] = Split.all,
                        queries: opt("--queries", "topics file (qid<TAB>text); default: the catalog's queries") = None,
                        docs: opt("--docs", "passages JSONL/Parquet ({docid, doc} or {id, text}); default: the "
                                  "catalog's documents") = None,
                        kind: Annotated[Optional[JudgeKind], typer.Option(
                            "--kind", help="overrides judge.training.kind: cross_encoder (fine-tuned MiniLM) or "
                            "features (cosine, BM25 and length; trains in a second)")] = None,
                        prior: Annotated[Optional[JudgePrior], typer.Option(
                            "--prior", help="overrides judge.training.prior: cosine (learn a correction of the "
                            "calibrated cosine judge) or none (the grades alone)")] = None,
                        epochs: opt("--epochs", "overrides judge.training.epochs", float) = None,
                        base_model: opt("--base-model", "overrides judge.training.base_model") = None,
                        learning_rate: opt("--learning-rate", "overrides judge.training.learning_rate", float) = None,
                        warmup_ratio: opt("--warmup-ratio", "overrides judge.training.warmup_ratio", float) = None,
                        max_length: opt("--max-length", "overrides judge.training.max_length", int) = None,
                        freeze_layers: opt("--freeze-layers", "overrides judge.training.freeze_layers", int) = None,
                        batch_size: opt("--batch-size", "overrides judge.training.batch_size", int) = None,
                        seed: opt("--seed", "overrides judge.training.seed", int) = None,
                        catalog: CatalogOpt = None, config: ConfigOpt = None, quiet: QuietOpt = False) -> int:
        """Train a judge (grades 0-3) from a label set: human qrels, or an LLM judge's labels."""
        with quiet_progress(quiet):
            return cmd_train_judge(ns(labels=labels, name=name, split=split.value, queries=queries, docs=docs,
                                      kind=kind.value if kind else None, prior=prior.value if prior else None,
                                      epochs=epochs, base_model=base_model, learning_rate=learning_rate,
                                      warmup_ratio=warmup_ratio, max_length=max_length, freeze_layers=freeze_layers,
                                      batch_size=batch_size, seed=seed, catalog=catalog, config=config))
