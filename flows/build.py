"""The `build` flow: the ordered list of stages, one Prefect task each.

The same flow is the scheduled refresh: every stage reuses cached work, so a re-run on
unchanged inputs makes no model calls and publishes no new versions. The flow holds the
catalog's run lock for its whole duration, so two refreshes against one catalog never
interleave: the second waits, then fails with a message naming the holder.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from schemas.config import check_buildable, config_from_dict, load_config
from tasks.caption import Caption
from tasks.embed import EmbedImage, EmbedText
from tasks.index.stage import Index
from tasks.ingest.stage import Ingest
from tasks.judge.stage import Judge
from tasks.negatives.stage import Negatives
from tasks.queries.answerability import Answerability
from tasks.queries.stage import Queries
from tasks.runtime.lifecycle import Run, open_run
from tasks.runtime.prefect_support import artifact_key, stage_task
from tasks.runtime.ray_session import ray_session
from tasks.tree.stage import TreeStage

# The build, in order. Each stage reads what earlier ones wrote; a disabled stage is skipped.
STAGES = (Ingest, Caption, EmbedText, EmbedImage, Index, Queries, Judge, Answerability, Negatives, TreeStage)


def run_stages(run: Run, stages=STAGES) -> dict:
    """Run each enabled stage as its own Prefect task, handing it the refs of its declared inputs
    as the upstream tasks returned them. Returns the current dataset refs by name."""
    refs: dict = {}
    for cls in stages:
        stage = cls(run.config)
        if not stage.enabled():
            continue
        wanted = {n: ref for n, ref in refs.items() if any(r.matches(n) for r in stage.inputs())}
        refs.update(stage_task(stage, run.config.flow)(run, stage, wanted))
    return refs


@flow(name="build", log_prints=False)
def build(config_path: str | None = None, config: dict | None = None) -> dict:
    """Build or refresh a corpus from a YAML config file (or an already-parsed dict)."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    cfg = load_config(config_path) if config_path else config_from_dict(config or {})
    check_buildable(cfg)
    with open_run(cfg, "build", prefect_flow_run_id=str(flow_run.id) if flow_run.id else None,
                  logger=logger, holder=f"build of '{cfg.name}'") as run:
        logger.info("run %s: catalog %s, data root %s", run.run_id, cfg.catalog_path, cfg.data_root_uri)
        try:
            with ray_session(cfg.ray.address, cfg.ray.num_cpus):
                refs = run_stages(run)
        except BaseException as e:
            _artifacts(run, failed=str(e))
            raise
    summary = run_summary(run, refs)
    if summary["note"]:
        logger.warning(summary["note"])
    _artifacts(run)
    return summary


def run_summary(run: Run, refs: dict) -> dict:
    quarantine = quarantine_by_code(run)
    return {
        "run_id": run.run_id,
        "catalog": run.config.catalog_path,
        "data_root": run.config.data_root_uri,
        "stages": run.summaries,
        "datasets": {name: {"version": ref.version, "rows": ref.row_count} for name, ref in refs.items()},
        "quarantine": quarantine,
        "note": nothing_to_do(run.summaries),
    }


def nothing_to_do(stages: list[dict]) -> str | None:
    """One line when the corpus gave no documents, so an empty result is not mistaken for a bug."""
    ingest = next((s for s in stages if s["stage"] == "ingest"), None)
    if ingest is None or ingest["rows_out"]:
        return None
    if ingest["rows_in"] == 0:
        return "nothing to do: the sources hold no records (check corpus.sources and their paths)"
    return (f"nothing to do: every input was quarantined or deduplicated ({ingest['rows_quarantined']} quarantined, "
            f"{ingest['rows_deduplicated']} deduplicated); see `corpusforge quarantine --summary`")


def quarantine_by_code(run: Run) -> list[dict]:
    """This run's quarantine counted by stage and reason code, with one example reason each."""
    return run.catalog.query(
        "SELECT stage, code, min(reason) AS reason, count(*) AS n FROM quarantine "
        "WHERE run_id = ? GROUP BY stage, code ORDER BY n DESC, stage, code", [run.run_id]).to_pylist()


def _artifacts(run: Run, failed: str | None = None) -> None:
    rows = [{k: s[k] for k in ("stage", "status", "rows_in", "rows_out", "rows_quarantined",
                                "rows_deduplicated", "model_calls", "cache_hits", "seconds")}
            | {"published": ", ".join(f"{ref}{'' if new else ' (unchanged)'}" for ref, new in s["published"].values())}
            for s in run.summaries]
    create_table_artifact(key=artifact_key(run.config.name, "build-stages"), table=rows,
                          description=f"Stage counts and timings of run {run.run_id}")
    q = quarantine_by_code(run)
    lines = [f"## Run {run.run_id}: {'FAILED: ' + failed if failed else 'completed'}", "",
             "### Quarantine by reason", "", "| stage | code | example reason | rows |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['code']} | {r['reason'].replace('|', '/')} | {r['n']} |" for r in q] \
        or ["| - | none | - | 0 |"]
    create_markdown_artifact(key=artifact_key(run.config.name, "build-quarantine"), markdown="\n".join(lines),
                             description="Quarantined rows of this run, by reason")
