"""Prefect flows of the training-data side: `export` (write training corpora) and `mine` (index and
mine hard negatives without a full build, e.g. from imported queries and qrels).

Each export format is one task; the dataset card goes to the run as a markdown artifact.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import ExportConfig, load_config


def locate(catalog: str | None, config_path: str | None) -> tuple[str, str, object | None]:
    """(catalog path, data root URI, config) from --catalog and/or --config. Without a config the data
    root is the default one beside the catalog (WORKDIR/data)."""
    cfg = load_config(config_path) if config_path else None
    if catalog is None and cfg is None:
        raise ValueError("pass a catalog or a config")
    catalog_path = catalog or cfg.catalog_path
    data_root = cfg.data_root_uri if cfg else str(Path(catalog_path).resolve().parent / "data")
    return catalog_path, data_root, cfg


@task(name="export-format", cache_policy=NO_CACHE)
def export_format(catalog_path: str, data_root: str, fmt: str, out: str, export_cfg: dict, name: str,
                  corpus_root: str | None) -> dict:
    from tasks.export import export
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.storage import DataRoot

    res = export(Catalog(catalog_path), DataRoot(data_root), fmt, out, ExportConfig.model_validate(export_cfg),
                 name=name, corpus_root=Path(corpus_root) if corpus_root else None)
    return {"path": str(res.path), "counts": res.card["counts"], "card": str(res.path / "README.md")}


@flow(name="export", log_prints=False)
def export_flow(formats: list[str], out: str | None = None, catalog: str | None = None,
                config_path: str | None = None, export_overrides: dict | None = None) -> dict:
    """Write each format to a versioned directory under `out` (default: export.out of the config)."""
    logger = get_run_logger()
    catalog_path, data_root, cfg = locate(catalog, config_path)
    export_cfg = (cfg.export if cfg else ExportConfig()).model_copy(update=export_overrides or {})
    out = out or (cfg.resolve(export_cfg.out) if cfg else export_cfg.out)
    name = cfg.name if cfg else Path(catalog_path).stem
    corpus_root = str(cfg.corpus_root) if cfg else None
    results = {}
    for fmt in formats:
        results[fmt] = export_format(catalog_path, data_root, fmt, out, export_cfg.model_dump(mode="json"), name,
                                     corpus_root)
        logger.info("export %s -> %s", fmt, results[fmt]["path"])
        create_markdown_artifact(key=f"export-{fmt.replace('-', '')}",
                                 markdown=Path(results[fmt]["card"]).read_text(),
                                 description=f"Dataset card of the {fmt} export")
    return results


@flow(name="mine", log_prints=False)
def mine_flow(config_path: str) -> dict:
    """Index the current embeddings and mine negatives for the configured queries, as one recorded run."""
    from tasks.index import index_task
    from tasks.negatives import mine_task
    from tasks.runtime.context import RunContext
    from tasks.runtime.ids import canonical_json, fingerprint

    logger = get_run_logger()
    cfg = load_config(config_path)
    ctx = RunContext.open(cfg)
    with ctx.catalog.run_lock(cfg.flow.lock_timeout_s, holder=f"mine of '{cfg.name}'"):
        ctx.run_id = ctx.catalog.start_run("mine", cfg.name, fingerprint(cfg), canonical_json(cfg.model_dump(mode="json")))
        try:
            refs = {r["name"]: ctx.catalog.current(r["name"]) for r in ctx.catalog.query(
                "SELECT name FROM datasets WHERE is_current").to_pylist()}
            if not any(n.startswith("embeddings/") for n in refs):
                raise LookupError("no embeddings in the catalog: run `corpusforge build --config FILE` first")
            index = index_task(ctx, refs)
            mined = mine_task(ctx)
        except BaseException as e:
            ctx.catalog.finish_run(ctx.run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
            raise
        ctx.catalog.finish_run(ctx.run_id, "completed")
    logger.info("mine: %s", mined)
    return {"run_id": ctx.run_id, "index": index, "negatives": mined}
