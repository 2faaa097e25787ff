"""The context a stage runs in: config, catalog, data root and run id, plus `record()`.

`record()` is the one way a stage's output reaches the catalog: it checks the accounting,
publishes every table through the validation gate, stores quarantined rows and writes the
stage_runs row, so every stage is counted the same way.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from schemas.config import BuildConfig
from tasks.runtime.accounting import StageOutput
from tasks.runtime.catalog import Catalog, DatasetVersion, now
from tasks.runtime.publish import PublishResult, publish, read
from tasks.runtime.storage import DataRoot
from tasks.runtime.validation import ValidationFailed

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    config: BuildConfig
    catalog: Catalog
    root: DataRoot
    run_id: str | None = None
    stage_summaries: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, config: BuildConfig, run_id: str | None = None) -> "RunContext":
        return cls(config, Catalog(config.catalog_path), DataRoot(config.data_root_uri), run_id)

    def read(self, name: str, version: int | None = None):
        return read(self.catalog, self.root, name, version)

    def current(self, name: str) -> DatasetVersion | None:
        return self.catalog.current(name)

    def record(self, out: StageOutput, *, parents: list[DatasetVersion], fingerprint: str | None,
               started_at: datetime, started: float, logger: logging.Logger | None = None
               ) -> dict[str, PublishResult]:
        logger = logger or log
        out.check()
        self.catalog.add_quarantine(self.run_id, out.quarantine)
        results: dict[str, PublishResult] = {}
        status, message = "completed", None
        try:
            for name, table in out.tables.items():
                extra = [e.model_dump() for e in self.config.validation.extra.get(name.split("/")[0], [])]
                results[name] = publish(self.catalog, self.root, name, table, parents=parents,
                                        run_id=self.run_id, stage=out.stage, fingerprint=fingerprint,
                                        extra_expectations=extra)
        except ValidationFailed as e:
            status, message = "failed", str(e)
            raise
        finally:
            seconds = time.perf_counter() - started
            self.catalog.record_stage(
                self.run_id, out.stage, fingerprint=fingerprint, started_at=started_at, status=status,
                rows_in=out.rows_in, rows_out=out.rows_out, rows_quarantined=out.rows_quarantined,
                rows_deduplicated=out.rows_deduplicated, model_calls=out.model_calls,
                cache_hits=out.cache_hits, seconds=seconds, message=message)
            summary = out.counts() | {"seconds": round(seconds, 3), "status": status,
                                      "published": {n: (r.dataset.ref, r.published) for n, r in results.items()}}
            self.stage_summaries.append(summary)
        for name, r in results.items():
            logger.info("%s: %s %s (%d rows)", out.stage, "published" if r.published else "unchanged",
                        r.dataset.ref, r.dataset.row_count)
        return results


def stage_clock() -> tuple[datetime, float]:
    return now(), time.perf_counter()
