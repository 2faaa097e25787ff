"""The `build` flow: ingest -> embed (and the later stages), one Prefect task per stage.

The same flow is the scheduled refresh: every stage reuses cached work, so a re-run on
unchanged inputs makes no model calls and publishes no new versions. The flow holds the
catalog's run lock for its whole duration, so two refreshes against one catalog never
interleave: the second waits, then fails with a message naming the holder.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from schemas.config import BuildConfig, config_from_dict, load_config
from tasks.caption import caption_task
from tasks.embed import embed_image_task, embed_text_task
from tasks.index import index_task
from tasks.ingest import ingest_task
from tasks.judge import judge_task
from tasks.negatives import mine_task
from tasks.queries import queries_task
from tasks.runtime.context import RunContext
from tasks.runtime.ids import canonical_json, fingerprint
from tasks.runtime.ray_session import ray_session
from tasks.tree.stage import tree_task


def _configured(task, cfg: BuildConfig):
    return task.with_options(retries=cfg.flow.retries, retry_delay_seconds=cfg.flow.retry_delay_s)


def run_stages(ctx: RunContext) -> dict:
    """The stage graph. Returns the current dataset refs by name."""
    cfg = ctx.config
    refs: dict = {}
    refs.update(_configured(ingest_task, cfg)(ctx))
    refs.update(_configured(caption_task, cfg)(ctx, refs["documents"]))
    refs.update(_configured(embed_text_task, cfg)(ctx, refs["documents"], refs.get("captions")))
    if cfg.embed.image is not None:
        refs.update(_configured(embed_image_task, cfg)(ctx, refs["documents"]))
    refs.update(_configured(queries_task, cfg)(ctx, refs["documents"], refs.get("captions"),
                                               refs.get("embeddings/text")))
    if cfg.judge.enabled:
        refs.update(_configured(judge_task, cfg)(ctx, refs.get("queries"), refs.get("embeddings/text")))
        refs["queries"] = ctx.current("queries") or refs.get("queries")  # answerability may have updated it
    if cfg.tree.enabled:
        refs.update(_configured(tree_task, cfg)(ctx, refs["documents"], refs["embeddings/text"], refs.get("captions")))
    _configured(index_task, cfg)(ctx, refs)
    if cfg.negatives.enabled:
        _configured(mine_task, cfg)(ctx)
        refs.update({n: ref for n in ("negatives", "candidates/mining") if (ref := ctx.current(n)) is not None})
    return refs


@flow(name="build", log_prints=False)
def build(config_path: str | None = None, config: dict | None = None) -> dict:
    """Build or refresh a corpus from a YAML config file (or an already-parsed dict)."""
    logger = get_run_logger()
    cfg = load_config(config_path) if config_path else config_from_dict(config or {})
    ctx = RunContext.open(cfg)
    from prefect.runtime import flow_run

    with ctx.catalog.run_lock(cfg.flow.lock_timeout_s, holder=f"build of '{cfg.name}'"):
        ctx.run_id = ctx.catalog.start_run(
            "build", cfg.name, fingerprint(cfg), canonical_json(cfg.model_dump(mode="json")),
            prefect_flow_run_id=str(flow_run.id) if flow_run.id else None)
        logger.info("run %s: catalog %s, data root %s", ctx.run_id, cfg.catalog_path, cfg.data_root_uri)
        try:
            with ray_session(cfg.ray.address, cfg.ray.num_cpus):
                refs = run_stages(ctx)
        except BaseException as e:
            ctx.catalog.finish_run(ctx.run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
            _artifacts(ctx, failed=str(e))
            raise
        ctx.catalog.finish_run(ctx.run_id, "completed")
    summary = run_summary(ctx, refs)
    _artifacts(ctx)
    return summary


def run_summary(ctx: RunContext, refs: dict) -> dict:
    quarantine = ctx.catalog.query(
        "SELECT stage, reason, count(*) AS n FROM quarantine WHERE run_id = ? GROUP BY ALL ORDER BY n DESC",
        [ctx.run_id]).to_pylist()
    return {
        "run_id": ctx.run_id,
        "catalog": ctx.config.catalog_path,
        "data_root": ctx.config.data_root_uri,
        "stages": ctx.stage_summaries,
        "datasets": {name: {"version": ref.version, "rows": ref.row_count} for name, ref in refs.items()},
        "quarantine": quarantine,
    }


def _artifacts(ctx: RunContext, failed: str | None = None) -> None:
    rows = [{k: s[k] for k in ("stage", "status", "rows_in", "rows_out", "rows_quarantined",
                                "rows_deduplicated", "model_calls", "cache_hits", "seconds")}
            | {"published": ", ".join(f"{ref}{'' if new else ' (unchanged)'}" for ref, new in s["published"].values())}
            for s in ctx.stage_summaries]
    create_table_artifact(key="build-stages", table=rows,
                          description=f"Stage counts and timings of run {ctx.run_id}")
    q = ctx.catalog.query("SELECT stage, reason, count(*) AS n FROM quarantine WHERE run_id = ? "
                          "GROUP BY ALL ORDER BY n DESC", [ctx.run_id]).to_pylist()
    lines = [f"## Run {ctx.run_id}: {'FAILED: ' + failed if failed else 'completed'}", "",
             "### Quarantine by reason", "", "| stage | reason | rows |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['reason'].replace('|', '/')} | {r['n']} |" for r in q] or ["| - | none | 0 |"]
    create_markdown_artifact(key="build-quarantine", markdown="\n".join(lines),
                             description="Quarantined rows of this run, by reason")
