"""The `evaluate` flow: the closed loop. Training data (the current export, or variants of it) ->
fine-tuned retrievers -> nDCG@10, Recall@100 and MRR@10 of the base and each tuned model on one
evaluation set, published as `evaluations` and compared in a Prefect artifact.

    with open_run(config, "evaluate"):
        [build stages]                              --build: the corpus first, reusing its caches
        import_qrels(evaluate.qrels)                the evaluation set becomes judgments/<stem>
        per variant: negatives/ablation-<v> -> sentence-transformers export (reused when current)
        train    -> models
        evaluate -> evaluations
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import config_for
from schemas.config import BuildConfig, EvaluateConfig

MEASURES = (("ndcg_10", "nDCG@10"), ("recall_100", "Recall@100"), ("mrr_10", "MRR@10"))


def evaluate_config(cfg: BuildConfig, **over) -> BuildConfig:
    """The config with command-line overrides of the evaluate section (None leaves a field as it is);
    files given on the command line resolve against the current directory."""
    values = {k: v for k, v in over.items() if v is not None}
    for k in ("qrels", "queries"):
        if k in values:
            values[k] = str(Path(values[k]).resolve())
    if values.get("qrels"):
        values["judge"] = None
    elif values.get("judge"):
        values["qrels"] = None
    train = values.pop("train", None)
    section = cfg.evaluate.model_dump() | values
    if train:
        section["train"] = section["train"] | train
    for k in ("qrels", "queries"):  # a config's own paths are relative to the config file
        if section[k]:
            section[k] = cfg.resolve(section[k])
    return cfg.model_copy(update={"evaluate": EvaluateConfig.model_validate(section)})


def variant_names(cfg: BuildConfig, variants: list[str] | None, ablation: bool) -> list[str]:
    if ablation:
        names = list(cfg.evaluate.variants) + [p for p in cfg.evaluate.policies if p not in cfg.evaluate.variants]
        return list(dict.fromkeys((variants or []) + names))
    return list(dict.fromkeys(variants or ["export"]))


@flow(name="evaluate", log_prints=False)
def evaluate_flow(config_path: str | None = None, catalog: str | None = None, export: str | None = None,
                  variants: list[str] | None = None, ablation: bool = False, build: bool = False,
                  qrels: str | None = None, queries: str | None = None, judge: str | None = None,
                  train: dict | None = None) -> dict:
    """Fine-tune on each training-data variant and evaluate base and tuned models on one evaluation set."""
    from prefect.runtime import flow_run

    from tasks.evaluate.evalset import label_set_name
    from tasks.evaluate.variants import variant
    from tasks.runtime.lifecycle import open_run

    logger = get_run_logger()
    cfg = evaluate_config(config_for(catalog, config_path), qrels=qrels, queries=queries, judge=judge, train=train)
    eval_set = label_set_name(cfg.evaluate)
    if eval_set is None:
        raise ValueError("an evaluation needs labels: --qrels FILE (TREC qrels over the corpus, with --queries "
                         "TOPICS) or --judge NAME (a label set in the catalog), or evaluate.qrels / evaluate.judge")
    specs = [variant(n, cfg) for n in variant_names(cfg, variants, ablation)]
    params = {"evaluate": cfg.evaluate.model_dump(mode="json"), "variants": [v.name for v in specs],
              "export": export, "build": build}
    with open_run(cfg, "evaluate", params=params, logger=logger, holder=f"evaluate of '{cfg.name}'",
                  prefect_flow_run_id=str(flow_run.id) if flow_run.id else None) as run:
        with _maybe_ray(cfg, run, build):
            summary = run_loop(run, cfg, eval_set, specs, export, build)
    _artifacts(cfg, summary)
    return summary


def run_loop(run, cfg: BuildConfig, eval_set: str, specs, export: str | None, build: bool) -> dict:
    """The stages of one evaluate run, in order, each a Prefect task."""
    from tasks.evaluate.exports import current_export, export_negatives, read_card
    from tasks.evaluate.stage import Evaluate, Train
    from tasks.evaluate.variants import PREFIX, AblationNegatives, variant_config
    from tasks.export.stage import Export
    from tasks.judge.imports import ImportQrels
    from tasks.runtime.prefect_support import stage_task

    logger = run.logger
    refs: dict = {}
    if build:
        from flows.build import check_buildable, run_stages

        check_buildable(cfg)
        refs.update(run_stages(run))
    if cfg.evaluate.qrels:
        stage = ImportQrels(cfg, paths=[cfg.evaluate.qrels])
        refs.update(stage_task(stage, cfg.flow)(run, stage, {}))
    if run.catalog.current(eval_set) is None:
        raise LookupError(f"the catalog has no label set {eval_set}: import it (`corpusforge import-qrels FILE`), "
                          "or pass --qrels FILE")
    out = cfg.resolve(cfg.export.out)
    trained, exports = [], {}
    for v in specs:
        if v.mined_here and v.negatives not in refs:
            stage = AblationNegatives(variant_config(cfg, v), variant=v.negatives.split("/", 1)[1][len(PREFIX):])
            wanted = {n: r for n, r in refs.items() if any(x.matches(n) for x in stage.inputs())}
            refs.update(stage_task(stage, cfg.flow)(run, stage, wanted))
        if v.name == "export" and export:
            path, negatives = Path(export).resolve(), export_negatives(export)
        else:
            negatives = v.negatives
            ref = refs.get(negatives) or run.catalog.current(negatives)
            if ref is None:
                raise LookupError(f"no {negatives} in the catalog: run `corpusforge build --config FILE` first "
                                  "(or pass --build)")
            name = cfg.name if v.name == "export" else f"{cfg.name}-{negatives.split('/', 1)[1]}"
            path = current_export(out, name, ref, cfg.export.model_dump(mode="json"))
            if path is None:
                stage = Export(cfg, format="sentence-transformers", out=out, name=name, negatives=negatives)
                stage_task(stage, cfg.flow)(run, stage, {negatives: ref})
                path = Path(run.summaries[-1]["notes"]["path"])
            else:
                logger.info("evaluate: training set %s is current (%s)", path, ref.ref)
        exports[v.name] = {"path": str(path), "rows": read_card(path).get("counts", {}).get("rows")}
        trained.append({"variant": v.name, "export_path": str(path), "negatives": negatives,
                        "hard_negatives": v.hard_negatives})
    stage = Train(cfg, runs=trained)
    refs.update(stage_task(stage, cfg.flow)(run, stage, {n: refs[n] for n in refs if n.startswith("negatives")}))
    models = run.summaries[-1]["notes"]["models"]
    stage = Evaluate(cfg, eval_set=eval_set, queries_file=cfg.evaluate.queries,
                     models=[{"variant": v, "model_id": m["model_id"]} for v, m in models.items()])
    wanted = {n: r for n, r in refs.items() if any(x.matches(n) for x in stage.inputs())}
    refs.update(stage_task(stage, cfg.flow)(run, stage, wanted))
    notes = run.summaries[-1]["notes"]
    return {"run_id": run.run_id, "catalog": cfg.catalog_path, "eval_set": eval_set, "counts": notes["counts"],
            "results": notes["results"], "models": models, "exports": exports,
            "evaluations": refs["evaluations"].ref, "models_dataset": refs["models"].ref}


def _maybe_ray(cfg: BuildConfig, run, build: bool):
    """Ray only where the run needs it: a build, or a corpus too large to embed in-process."""
    import contextlib

    from tasks.embed import SERVICE_LOCAL_BELOW
    from tasks.runtime.ray_session import ray_session

    docs = run.catalog.current("documents")
    if build or (docs is not None and docs.row_count >= SERVICE_LOCAL_BELOW):
        return ray_session(cfg.ray.address, cfg.ray.num_cpus)
    return contextlib.nullcontext()


def comparison_markdown(summary: dict) -> str:
    """Base against each tuned model, one row per variant."""
    c = summary["counts"]
    lines = [f"### {summary['eval_set']}: {c['queries']} queries, {c['labels']} labels "
             f"({c['labels_outside_corpus']} outside the corpus)", "",
             "| variant | model | " + " | ".join(label for _, label in MEASURES) + " | ΔnDCG@10 | p | train pairs |",
             "|---|---|" + "---|" * (len(MEASURES) + 3)]
    for r in summary["results"]:
        gain = "" if r["ndcg_10_gain"] is None else f"{r['ndcg_10_gain']:+.4f}"
        p = "" if r["ndcg_10_p"] is None else f"{r['ndcg_10_p']:.3f}"
        model = Path(r["model"]).name if r["role"] == "tuned" else r["model"]
        lines.append(f"| {r['variant']} | {model} | " + " | ".join(f"{r[k]:.4f}" for k, _ in MEASURES)
                     + f" | {gain} | {p} | {r['train_pairs'] or ''} |")
    return "\n".join(lines)


def _artifacts(cfg: BuildConfig, summary: dict) -> None:
    from tasks.export.formats import slug

    key = f"evaluate-{slug(cfg.name).lower().replace('_', '-').replace('.', '-')}"
    create_markdown_artifact(key=key, markdown=comparison_markdown(summary),
                             description=f"base vs fine-tuned retrievers on {summary['eval_set']}")
    create_table_artifact(key=f"{key}-table", table=[{k: r[k] for k in ("variant", "role", "ndcg_10", "recall_100",
                                                                       "mrr_10", "ndcg_10_gain", "train_pairs")}
                                                     for r in summary["results"]],
                          description=f"evaluations of run {summary['run_id']}")
