"""How stages become Prefect tasks: one generic task per stage run, retries only for transient errors.

A bad config, a failed validation, an accounting error or a missing GPU fails the same way every
time, so those are not retried; I/O and Ray worker failures are. A stage's task receives the refs
of its declared inputs as returned by the upstream tasks, so the Prefect UI draws the real edges.
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
             FileNotFoundError, LookupError, ValueError, TypeError)


def retry_transient(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and not isinstance(exc, PERMANENT)


@task(cache_policy=NO_CACHE, retry_condition_fn=retry_transient, log_prints=False)
def _stage(run, stage, inputs: dict) -> dict:
    from tasks.runtime.runner import run_stage

    run.logger = run_logger()
    return run_stage(run, stage, inputs)


def stage_task(stage, flow_cfg=None):
    """The Prefect task that runs `stage` (named after it), with the flow's retry settings. Call it
    as (run, stage, input refs): only the refs are traced, so the UI's edges are the declared reads."""
    from prefect.utilities.annotations import quote

    opts = {"name": stage.name, "task_run_name": stage.name, "description": stage.description or stage.name}
    if flow_cfg is not None:
        opts |= {"retries": flow_cfg.retries, "retry_delay_seconds": flow_cfg.retry_delay_s}
    task = _stage.with_options(**opts)

    def call(run, stage_, inputs: dict) -> dict:
        return task(quote(run), quote(stage_), inputs)

    return call


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a run, the stdlib logger outside (plain function calls)."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - MissingContextError outside a run
        return logging.getLogger("corpusforge")


def artifact_key(corpus: str, kind: str) -> str:
    """A Prefect artifact key that names the corpus (keys allow lowercase letters, digits and dashes),
    so two corpora's artifacts of the same kind stay apart in the UI."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", f"{corpus}-{kind}".lower()).strip("-")


def name_flow_run(run_id: str, corpus: str) -> None:
    """Name the current Prefect flow run after the corpusforge run and corpus ("sample 20260102-…"),
    so the UI's runs list reads like `corpusforge runs`. Outside a flow run, nothing to do."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run

        if not flow_run.id:
            return
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=f"{corpus} {run_id}")
    except Exception as e:  # noqa: BLE001 - a name is a label, never a reason to fail the run
        logging.getLogger(__name__).debug("flow run not renamed: %s", e)
