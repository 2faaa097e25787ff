"""What the flows and commands share: finding the config and catalog a command works on."""
from __future__ import annotations

import os
from pathlib import Path

from schemas.config import BuildConfig, catalog_config, load_config

DEFAULT_CATALOG = ".corpusforge/catalog.duckdb"


def default_catalog() -> str:
    return os.environ.get("CORPUSFORGE_CATALOG", DEFAULT_CATALOG)


def config_for(catalog: str | None = None, config_path: str | None = None) -> BuildConfig:
    """The config of a command: --config when given (with --catalog overriding its catalog, the
    data root then beside that catalog), else a catalog-only config for --catalog or the default."""
    if config_path:
        cfg = load_config(config_path)
        if catalog and Path(catalog).resolve() != Path(cfg.catalog_path).resolve():
            cat = Path(catalog).resolve()
            cfg = cfg.model_copy(update={"catalog": str(cat), "data_root": str(cat.parent / "data")})
        return cfg
    from tasks.runtime.catalog import remembered_data_root

    path = catalog or default_catalog()
    return catalog_config(path, data_root=remembered_data_root(path))
