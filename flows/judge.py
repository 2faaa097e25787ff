"""The `judge` flow: grade a pool of (query, document) pairs into the judge's label set.

Pools: TREC qrels/run files or Parquet naming the pairs (with a topics file and a passages
file), or, with a build config, the corpus's synthetic queries x their top-k documents. Model
work runs on Ray actors (local Ray by default, RAY_ADDRESS for a cluster); the flow is one
recorded run and leaves Prefect artifacts with the status counts and the label distribution.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import config_for
from schemas.config import JudgeConfig


def judge_overrides(cfg: JudgeConfig, backend: str | None, model: str | None, base_url: str | None) -> JudgeConfig:
    over = {}
    if backend:
        over["backend"] = backend
    if model:
        over["model"] = model
    if base_url:
        over["openai"] = cfg.openai.model_dump() | {"base_url": base_url}
    return JudgeConfig.model_validate(cfg.model_dump() | over) if over else cfg


@flow(name="judge", log_prints=False)
def judge_flow(pairs: str | None = None, queries: str | None = None, docs: str | None = None,
               catalog: str | None = None, config_path: str | None = None, backend: str | None = None,
               model: str | None = None, base_url: str | None = None, limit: int | None = None,
               pool: str | None = None) -> dict:
    """Judge pairs from files, or a pool of a build config's catalog (`queries`: the synthetic
    queries x top-k; `imported`: negatives.queries_file x top-k; `mining`: the mined candidates)."""
    from prefect.runtime import flow_run

    from tasks.judge.stage import Judge
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.prefect_support import stage_task
    from tasks.runtime.ray_session import ray_session

    logger = get_run_logger()
    cfg = config_for(catalog, config_path)
    cfg = cfg.model_copy(update={"judge": judge_overrides(cfg.judge, backend, model, base_url)})
    if pairs and not (queries and docs):
        raise ValueError("--pairs needs --queries (topics file) and --docs (passages file)")
    params = {"pairs": pairs, "queries": queries, "docs": docs, "limit": limit} if pairs else \
        ({"pool": pool} if pool else {})
    stage = Judge(cfg, **params)
    described = {"judge": cfg.judge.model_dump(mode="json"), **params}
    with open_run(cfg, "judge", params=described, holder="judge flow", logger=logger,
                  prefect_flow_run_id=str(flow_run.id) if flow_run.id else None) as run:
        with ray_session(cfg.ray.address, cfg.ray.num_cpus):
            refs = stage_task(stage, cfg.flow)(run, stage, {})
    s = run.summaries[-1]
    ref = refs[stage.outputs()[0]]
    summary = {k: s[k] for k in ("rows_in", "rows_out", "rows_quarantined", "rows_deduplicated", "model_calls",
                                 "cache_hits")} | {"judge": s["notes"]["judge"], "statuses": s["notes"]["statuses"],
                                                   "dataset": ref.ref, "published": s["published"][ref.name][1],
                                                   "run_id": run.run_id, "catalog": run.catalog.path}
    _artifacts(run, summary)
    logger.info("judge run %s: %s", run.run_id, summary)
    return summary


def _artifacts(run, summary: dict) -> None:
    """Status counts and this judge's label distribution, for the Prefect UI."""
    from tasks.runtime.prefect_support import artifact_key

    statuses = [{"status": k, "n": v} for k, v in summary["statuses"].items()]
    create_table_artifact(key=artifact_key(run.config.name, "judge-statuses"), table=statuses,
                          description=f"judgments made this run by {summary['judge']}")
    dist = run.catalog.query("SELECT grade, status, n, round(share, 4) AS share FROM judgment_label_distribution "
                             "WHERE judge = ?", [summary["judge"]]).to_pylist()
    lines = ["| grade | status | n | share |", "|---|---|---|---|"]
    lines += [f"| {r['grade'] if r['grade'] is not None else '-'} | {r['status']} | {r['n']} | {r['share']} |"
              for r in dist]
    counts = (f"pairs {summary['rows_out']}, judged now {summary['model_calls']}, cached {summary['cache_hits']}, "
              f"quarantined {summary['rows_quarantined']}")
    create_markdown_artifact(key=artifact_key(run.config.name, "judge-labels"), markdown=f"### {summary['judge']}\n\n{counts}\n\n" + "\n".join(lines),
                             description="label distribution of this judge")
