"""Prefect flows of the training-data side: `export` (write training corpora) and `mine` (index and
mine hard negatives without a full build, e.g. from imported queries and qrels)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import config_for


@flow(name="export", log_prints=False)
def export_flow(formats: list[str], out: str | None = None, catalog: str | None = None,
                config_path: str | None = None, export_overrides: dict | None = None,
                negatives: str | None = None) -> dict:
    """Write each format to a versioned directory under `out` (default: export.out of the config)."""
    from tasks.export.stage import Export
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.prefect_support import artifact_key, stage_task

    logger = get_run_logger()
    cfg = config_for(catalog, config_path)
    cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update=export_overrides or {})})
    out = out or cfg.resolve(cfg.export.out)
    name = cfg.name
    stages = [Export(cfg, format=fmt, out=out, name=name, negatives=negatives) for fmt in formats]
    results = {}
    with open_run(cfg, "export", params={"formats": formats, "out": str(out), "negatives": negatives},
                  logger=logger) as run:
        for stage in stages:
            stage_task(stage, cfg.flow)(run, stage, {})
            notes = run.summaries[-1]["notes"]
            results[stage.format] = {"path": notes["path"], "counts": notes["card"]["counts"],
                                     "card": str(Path(notes["path"]) / "README.md")}
            logger.info("export %s -> %s", stage.format, notes["path"])
            create_markdown_artifact(key=artifact_key(name, f"export-{stage.format}"),
                                     markdown=Path(results[stage.format]["card"]).read_text(),
                                     description=f"Dataset card of the {stage.format} export")
    return results


@flow(name="mine", log_prints=False)
def mine_flow(config_path: str) -> dict:
    """Index the current embeddings and mine negatives for the configured queries, as one recorded run."""
    from flows.build import run_stages
    from tasks.index.stage import Index
    from tasks.negatives.stage import Negatives
    from tasks.runtime.lifecycle import open_run

    logger = get_run_logger()
    cfg = config_for(None, config_path)
    with open_run(cfg, "mine", logger=logger) as run:
        if not any(n.startswith("embeddings/") for n in run.catalog.current_all()):
            raise LookupError("no embeddings in the catalog: run `corpusforge build --config FILE` first")
        run_stages(run, (Index, Negatives))
    by_stage = {s["stage"]: s for s in run.summaries}
    mined = by_stage.get("negatives", {}).get("notes", {})
    logger.info("mine: %s", {k: v for k, v in mined.items() if not isinstance(v, (list, dict))})
    return {"run_id": run.run_id, "index": by_stage["index"]["notes"], "negatives": mined}
