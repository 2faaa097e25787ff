"""The `judge` flow: grade a pool of (query, document) pairs and publish the judgments.

Pools: TREC qrels/run files or Parquet naming the pairs (with a topics file and a passages
file), or, with a build config, the corpus's synthetic queries x their top-k candidates.
Model work runs on Ray actors (local Ray by default, RAY_ADDRESS for a cluster); the flow holds
the catalog's run lock, records a run, and leaves Prefect artifacts with the status counts and
the label distribution of this judge.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import JudgeConfig, load_config
from tasks.runtime.ids import canonical_json, fingerprint


def _judge_config(config_path: str | None, backend: str | None, model: str | None,
                  base_url: str | None) -> tuple[JudgeConfig, object]:
    build_cfg = load_config(config_path) if config_path else None
    cfg = build_cfg.judge if build_cfg else JudgeConfig()
    over = {}
    if backend:
        over["backend"] = backend
    if model:
        over["model"] = model
    if base_url:
        over["openai"] = cfg.openai.model_dump() | {"base_url": base_url}
    if over:
        cfg = JudgeConfig.model_validate(cfg.model_dump() | over)
    return cfg, build_cfg


@task(name="judge", cache_policy=NO_CACHE)
def judge_task(catalog: str, data_root: str | None, run_id: str, cfg_json: str, pairs: str | None,
               queries: str | None, docs: str | None, limit: int | None, config_path: str | None) -> dict:
    """Build the pool, judge what is new, publish; returns a small summary (never the table)."""
    from tasks import judge as stage
    from tasks.judgments.store import Store

    logger = get_run_logger()
    cfg = JudgeConfig.model_validate_json(cfg_json)
    store = Store.open(catalog, data_root)
    if pairs:
        if not (queries and docs):
            raise ValueError("--pairs needs --queries (topics file) and --docs (passages file)")
        pool = stage.pool_from_files(pairs, queries, docs)
    else:
        if not config_path:
            raise ValueError("judge needs --pairs/--queries/--docs, or --config to judge the corpus's queries")
        from tasks.runtime.context import RunContext

        ctx = RunContext.open(load_config(config_path), run_id)
        pool = stage.pool_from_catalog(ctx, cfg.top_k)
    if limit is not None and pool.pairs.num_rows > limit:
        skipped = pool.pairs.num_rows - limit
        pool.pairs = pool.pairs.slice(0, limit)
        pool.rows_in -= skipped  # pairs left out on purpose are not input to this run
    logger.info("judging %d pairs (%d quarantined) with backend %s", pool.pairs.num_rows,
                len(pool.quarantine), cfg.backend)
    return stage.run_judge_stage(store, pool, cfg, run_id=run_id, logger=logger)


@flow(name="judge", log_prints=False)
def judge_flow(pairs: str | None = None, queries: str | None = None, docs: str | None = None,
               catalog: str | None = None, config_path: str | None = None, backend: str | None = None,
               model: str | None = None, base_url: str | None = None, limit: int | None = None) -> dict:
    """Judge pairs from files (or a build config's queries) into a catalog's judgments."""
    from prefect.runtime import flow_run

    from tasks.judgments.analysis import sync_judgments_view
    from tasks.judgments.store import Store
    from tasks.runtime.ray_session import ray_session

    logger = get_run_logger()
    cfg, build_cfg = _judge_config(config_path, backend, model, base_url)
    catalog = catalog or (build_cfg.catalog_path if build_cfg else ".corpusforge/catalog.duckdb")
    data_root = build_cfg.data_root_uri if build_cfg and Path(catalog) == Path(build_cfg.catalog_path) else None
    store = Store.open(catalog, data_root)
    params = {"judge": cfg.model_dump(mode="json"), "pairs": pairs, "queries": queries, "docs": docs, "limit": limit}
    timeout = build_cfg.flow.lock_timeout_s if build_cfg else 600.0
    with store.catalog.run_lock(timeout, holder="judge flow"):
        run_id = store.catalog.start_run("judge", build_cfg.name if build_cfg else "judge", fingerprint(params),
                                         canonical_json(params),
                                         prefect_flow_run_id=str(flow_run.id) if flow_run.id else None)
        try:
            ray_address = build_cfg.ray.address if build_cfg else None
            ray_cpus = build_cfg.ray.num_cpus if build_cfg else None
            with ray_session(ray_address, ray_cpus):
                summary = judge_task(str(store.catalog.path), str(store.root.uri), run_id, cfg.model_dump_json(),
                                     pairs, queries, docs, limit, config_path)
        except BaseException as e:
            store.catalog.finish_run(run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
            raise
        store.catalog.finish_run(run_id, "completed")
    sync_judgments_view(store.catalog, store.root)
    summary["run_id"] = run_id
    summary["catalog"] = store.catalog.path
    _artifacts(store, summary)
    logger.info("judge run %s: %s", run_id, summary)
    return summary


def _artifacts(store, summary: dict) -> None:
    """Status counts and this judge's label distribution, for the Prefect UI."""
    statuses = [{"status": k, "n": v} for k, v in summary["statuses"].items()]
    create_table_artifact(key="judge-statuses", table=statuses,
                          description=f"judgments made this run by {summary['judge']}")
    dist = store.catalog.query("SELECT grade, status, n, round(share, 4) AS share FROM judgment_label_distribution "
                               "WHERE judge = ?", [summary["judge"]]).to_pylist()
    lines = ["| grade | status | n | share |", "|---|---|---|---|"]
    lines += [f"| {r['grade'] if r['grade'] is not None else '-'} | {r['status']} | {r['n']} | {r['share']} |"
              for r in dist]
    counts = (f"pairs {summary['rows_out']}, judged now {summary['model_calls']}, cached {summary['cache_hits']}, "
              f"quarantined {summary['rows_quarantined']}")
    create_markdown_artifact(key="judge-labels", markdown=f"### {summary['judge']}\n\n{counts}\n\n" + "\n".join(lines),
                             description="label distribution of this judge")
