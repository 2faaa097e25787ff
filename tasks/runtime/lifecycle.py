"""The one run lifecycle: lock -> start_run -> stages -> finish_run, for every flow and command
that writes (build, refresh, judge, search, export, mine, the imports).

    with open_run(config, "build") as run:
        run_stage(run, Ingest(config))

The run holds the catalog's lock for its whole duration, so two writers never interleave; the
run row ends `completed` or `failed` with the error, whatever happens inside.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa

from schemas.config import BuildConfig
from tasks.runtime.catalog import Catalog, DatasetVersion
from tasks.runtime.ids import canonical_json, fingerprint
from tasks.runtime.publish import read
from tasks.runtime.storage import DataRoot

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A recorded run: its config, catalog, data root and id, and what its stages did."""

    config: BuildConfig
    catalog: Catalog
    root: DataRoot
    run_id: str | None = None
    flow: str = "run"
    summaries: list[dict] = field(default_factory=list)
    logger: logging.Logger | logging.LoggerAdapter = field(default_factory=lambda: logging.getLogger("corpusforge"))
    quiet: bool = False

    @classmethod
    def open(cls, config: BuildConfig, **kwargs) -> "Run":
        """A run over the config's catalog and data root, not yet started (reads, tests)."""
        root = DataRoot(config.data_root_uri)
        return cls(config, Catalog(config.catalog_path, root), root, **kwargs)

    def read(self, name: str, version: int | None = None, columns: list[str] | None = None) -> pa.Table:
        return read(self.catalog, self.root, name, version, columns)

    def current(self, name: str) -> DatasetVersion | None:
        return self.catalog.current(name)

    def attachment(self, ref: DatasetVersion, filename: str) -> str | None:
        """A local path to a file stored with a dataset version, or None when it has none."""
        from tasks.runtime.storage import local_copy

        base = self.catalog.meta(ref.name, ref.version).get("_attachments")
        return local_copy(self.root, self.root.path(base, filename)) if base else None

    @contextlib.contextmanager
    def progress(self, stage: str):
        from tasks.runtime.progress import Progress

        with Progress.for_stage(stage, quiet=self.quiet, logger=self.logger, corpus=self.config.name) as p:
            yield p


def _described(config: BuildConfig) -> dict:
    """The config as the run records it, the corpus root resolved, so exports find the images later."""
    d = config.model_dump(mode="json")
    if config.corpus is not None and "://" not in config.corpus.root:
        d["corpus"]["root"] = str(config.corpus_root)
    return d


def _prefect_flow_run_id() -> str | None:
    """The Prefect flow run this run is inside, if any (without importing Prefect for plain commands)."""
    import sys

    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def refuse_old_catalog(catalog) -> None:
    """A catalog whose current versions are single Parquet files (before sharded versions) is not
    migrated in place: its stages would re-read whole copies. Refuse with the way out."""
    from tasks.runtime.publish import OldCatalog

    old = [ref for ref in catalog.current_all().values() if ref.table_version is None]
    if old:
        raise OldCatalog(sorted(old, key=lambda r: r.name)[0], count=len(old), catalog=catalog.path)


@contextlib.contextmanager
def open_run(config: BuildConfig, flow: str, *, params: dict | None = None, holder: str | None = None,
             prefect_flow_run_id: str | None = None, logger=None, quiet: bool = False) -> Iterator[Run]:
    """Lock the catalog, record the run, yield it, and record how it ended."""
    from tasks.runtime.preflight import check_run_paths

    check_run_paths(config)
    run = Run.open(config, flow=flow, quiet=quiet)
    if logger is not None:
        run.logger = logger
    described = params if params is not None else _described(config)
    with run.catalog.run_lock(config.flow.lock_timeout_s, holder=holder or f"{flow} of '{config.name}'"):
        run.catalog.mark_abandoned_runs()
        refuse_old_catalog(run.catalog)
        prefect_flow_run_id = prefect_flow_run_id or _prefect_flow_run_id()
        run.catalog.remember_data_root(run.root.uri)
        run.run_id = run.catalog.start_run(flow, config.name, fingerprint(described), canonical_json(described),
                                           prefect_flow_run_id=prefect_flow_run_id)
        if prefect_flow_run_id:
            from tasks.runtime.prefect_support import name_flow_run

            name_flow_run(run.run_id, config.name)
        try:
            yield run
        except BaseException as e:
            run.catalog.finish_run(run.run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
            raise
        else:
            run.catalog.finish_run(run.run_id, "completed")
