"""Scheduled refreshes: the `build` flow served as a Prefect deployment with a cron schedule.

`corpusforge serve --config FILE --cron "0 3 * * *"` registers the deployment with the Prefect
API in PREFECT_API_URL and runs it on schedule from this process (`flow.serve`).
"""
from __future__ import annotations

from pathlib import Path

from schemas.config import load_config


def deployment_name(config_path: str, name: str | None = None) -> str:
    return name or f"refresh-{load_config(config_path).name}"


def serve(config_path: str, cron: str, name: str | None = None) -> None:
    from flows.build import build

    path = str(Path(config_path).resolve())
    build.serve(name=deployment_name(path, name), cron=cron, parameters={"config_path": path},
                tags=["corpusforge", "refresh"], description=f"Scheduled refresh of {path}")
