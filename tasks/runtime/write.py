"""The one write path: quarantine rows, validated publishes and the stage_runs row.

Every stage's outcome reaches the catalog here, in the same order, with the same counts, on
success and on failure; nothing else in the code base calls `publish`.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from tasks.runtime.catalog import DatasetVersion
from tasks.runtime.publish import publish
from tasks.runtime.validation import ValidationFailed

if TYPE_CHECKING:
    from tasks.runtime.lifecycle import Run
    from tasks.runtime.runner import Outcome
    from tasks.runtime.stage import Stage

log = logging.getLogger(__name__)


def commit(run: "Run", stage: "Stage", outcome: "Outcome", *, parents: list[DatasetVersion],
           started_at: datetime, started: float) -> dict[str, DatasetVersion]:
    """Quarantine, publish every output table through the validation gate, record the stage run."""
    fp = stage.fingerprint()
    run.catalog.add_quarantine(run.run_id, outcome.quarantine)
    results = {}
    status, message = "completed", None
    try:
        for name, output in outcome.tables.items():
            extra = [e.model_dump() for e in run.config.validation.extra.get(name.split("/")[0], [])]
            results[name] = publish(run.catalog, run.root, name, output, parents=parents, run_id=run.run_id,
                                    stage=stage.name, fingerprint=fp, extra_expectations=extra)
    except ValidationFailed as e:
        status, message = "failed", str(e)
        raise
    except BaseException as e:
        status, message = "failed", f"{type(e).__name__}: {e}"[:2000]
        raise
    finally:
        seconds = time.perf_counter() - started
        peak = (outcome.memory or {}).get("peak_mb")
        _record(run, stage.name, fp, started_at, status, outcome.counts(), seconds, message, peak)
        run.summaries.append(outcome.counts() | {
            "seconds": round(seconds, 3), "status": status,
            "published": {n: (r.dataset.ref, r.published) for n, r in results.items()}, "notes": outcome.notes,
            "memory": outcome.memory})
    for name, r in results.items():
        run.logger.info("%s: %s %s (%d rows)", stage.name, "published" if r.published else "unchanged",
                        r.dataset.ref, r.dataset.row_count)
    return {name: r.dataset for name, r in results.items()}


def record_failure(run: "Run", stage: "Stage", error: BaseException, *, started_at: datetime, started: float) -> None:
    """A stage that failed before its outcome existed still gets its stage_runs row."""
    try:
        fp = stage.fingerprint()
    except Exception:  # noqa: BLE001 - the fingerprint itself may be what failed (a missing prompt)
        fp = None
    zero = {"rows_in": 0, "rows_out": 0, "rows_quarantined": 0, "rows_deduplicated": 0, "model_calls": 0,
            "cache_hits": 0}
    message = f"{type(error).__name__}: {error}"[:2000]
    _record(run, stage.name, fp, started_at, "failed", zero, time.perf_counter() - started, message)
    run.summaries.append({"stage": stage.name, **zero, "seconds": round(time.perf_counter() - started, 3),
                          "status": "failed", "published": {}, "notes": {"error": message}})


def _record(run: "Run", stage: str, fp: str | None, started_at: datetime, status: str, counts: dict,
            seconds: float, message: str | None, peak_memory_mb: float | None = None) -> None:
    run.catalog.record_stage(
        run.run_id, stage, fingerprint=fp, started_at=started_at, status=status, rows_in=counts["rows_in"],
        rows_out=counts["rows_out"], rows_quarantined=counts["rows_quarantined"],
        rows_deduplicated=counts["rows_deduplicated"], model_calls=counts["model_calls"],
        cache_hits=counts["cache_hits"], seconds=seconds, message=message, peak_memory_mb=peak_memory_mb)


def seed(catalog, root, name: str, table, parents=()) -> DatasetVersion:
    """Put a dataset version into a catalog outside any stage (test fixtures, notebooks)."""
    return publish(catalog, root, name, table, parents=list(parents)).dataset
