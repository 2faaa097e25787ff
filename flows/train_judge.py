"""The `train-judge` flow: a cross-encoder judge trained from a label set in the catalog.

One recorded run with one stage run (tasks.judge.train_stage.TrainJudge): the label set's labels
in the chosen split become `judge_models/<name>` (the training labels, the model stored with the
version, lineage to the label set). A qrels file given as the labels is imported first, as
`judgments/<file stem>`, so human qrels and LLM label sets train the same way.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.common import config_for
from schemas.config import BuildConfig, JudgeTraining


def with_training(cfg: BuildConfig, overrides: dict | None) -> BuildConfig:
    """The config with judge.training fields overridden (the command's --epochs, --base-model, ...)."""
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not over:
        return cfg
    training = JudgeTraining.model_validate(cfg.judge.training.model_dump() | over)
    return cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"training": training})})


def train_judge(cfg: BuildConfig, labels: str, name: str | None = None, split: str = "all",
                queries: str | None = None, docs: str | None = None, logger=None) -> dict:
    """Train (or find unchanged) the judge `name` from the label set `labels`; returns a summary."""
    from tasks.judge.train_stage import TrainJudge
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.prefect_support import stage_task

    if Path(labels).is_file():
        from flows.imports import import_qrels

        import_qrels(cfg, [labels])
        labels = Path(labels).stem
    params = {"labels": labels, "split": split, "queries": str(Path(queries).resolve()) if queries else None,
              "docs": str(Path(docs).resolve()) if docs else None}
    if name:
        params["name"] = name
    stage = TrainJudge(cfg, **params)
    described = {"training": cfg.judge.training.model_dump(mode="json"), **stage.params}
    with open_run(cfg, "train-judge", params=described, holder=f"train-judge {stage.model_name}",
                  logger=logger) as run:
        refs = stage_task(stage, cfg.flow)(run, stage, {})
    s = run.summaries[-1]
    ref = refs[stage.outputs()[0]]
    notes = s["notes"]
    manifest = notes.get("manifest") or run.catalog.meta(ref.name, ref.version).get("manifest", {})
    return {"model": stage.model_name, "kind": cfg.judge.training.kind, "dataset": ref.ref,
            "trained": notes.get("trained"),
            "labels": notes.get("labels"), "split": split, "pairs": s["rows_out"],
            "quarantined": s["rows_quarantined"], "seconds": manifest.get("seconds"),
            "train_loss": manifest.get("train_loss"), "steps": manifest.get("steps"), "run_id": run.run_id,
            "catalog": run.catalog.path}


@flow(name="train-judge", log_prints=False)
def train_judge_flow(labels: str, name: str | None = None, split: str = "all", queries: str | None = None,
                     docs: str | None = None, catalog: str | None = None, config_path: str | None = None,
                     training: dict | None = None) -> dict:
    """Train a cross-encoder judge from a label set (a judge in the catalog, or a qrels file)."""
    logger = get_run_logger()
    cfg = with_training(config_for(catalog, config_path), training)
    summary = train_judge(cfg, labels, name, split, queries, docs, logger=logger)
    logger.info("train-judge %s: %s", summary["model"], summary)
    return summary
