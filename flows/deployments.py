"""Scheduled refreshes: the `build` flow served as a Prefect deployment with a cron schedule.

`corpusforge serve --config FILE --cron "0 3 * * *" --timezone Europe/Berlin` registers the
deployment with the Prefect API in PREFECT_API_URL and runs it on schedule from this process
(`flow.serve`). The entrypoint is the module path `flows.build.build`, so the deployment works
from any directory, and the schedule carries its time zone (03:00 there, across DST changes).
"""
from __future__ import annotations

from pathlib import Path

from schemas.config import ConfigError, load_config


def deployment_name(config_path: str, name: str | None = None) -> str:
    return name or f"refresh-{load_config(config_path).name}"


def deployment(config_path: str, cron: str, name: str | None = None, timezone: str = "UTC"):
    """The RunnerDeployment `serve` registers: module entrypoint, cron schedule in `timezone`."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.build import build

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {timezone!r}: use an IANA name such as UTC or Europe/Berlin") from None
    path = str(Path(config_path).resolve())
    return build.to_deployment(name=deployment_name(path, name), schedules=[Cron(cron, timezone=timezone)],
                               parameters={"config_path": path}, tags=["corpusforge", "refresh"],
                               description=f"Scheduled refresh of {path}",
                               entrypoint_type=EntrypointType.MODULE_PATH)


def serve(config_path: str, cron: str, name: str | None = None, timezone: str = "UTC") -> None:
    from prefect import serve as prefect_serve

    prefect_serve(deployment(config_path, cron, name, timezone))
