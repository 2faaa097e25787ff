"""How stages become Prefect tasks: one task per stage, retries only for transient errors.

A bad config, a failed validation or a missing GPU fails the same way every time, so those
are not retried; I/O and Ray worker failures are.
"""
from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import ConfigError
from tasks.runtime.accounting import AccountingError
from tasks.runtime.catalog import CatalogBusy
from tasks.runtime.ray_session import ResourceUnavailable
from tasks.runtime.validation import ValidationFailed

PERMANENT = (ValidationFailed, ConfigError, ResourceUnavailable, AccountingError, CatalogBusy,
             FileNotFoundError, KeyError, ValueError, TypeError)


def retry_transient(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and not isinstance(exc, PERMANENT)


def stage_task(name: str, **kwargs):
    """Decorator for a stage's Prefect task. Tasks pass dataset refs, never tables, so no caching
    of inputs is needed: the work cache handles reuse at item level."""
    return task(name=name, cache_policy=NO_CACHE, retry_condition_fn=retry_transient,
                log_prints=False, **kwargs)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a run, the stdlib logger outside (plain function calls)."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - MissingContextError outside a run
        return logging.getLogger("corpusforge")
