"""Where and how work runs: Ray, build tasks, the flow, validation."""
from __future__ import annotations

from pydantic import Field

from schemas.config.fields import Strict, resource


class RayConfig(Strict):
    address: str | None = Field(None, description="cluster address; RAY_ADDRESS overrides when set")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only")


class TaskConfig(Strict):
    """Where a stage's build step runs (index, tree, mining): a Ray task of its own once the
    input is large, so the flow process never holds the corpus; in-process below `local_below`."""

    cpus: float = Field(1.0, gt=0, description="CPUs the Ray task asks for")
    memory_mb: int | None = Field(None, gt=0, description="memory the Ray task asks for (Ray schedules by it)")
    local_below: int = Field(100_000, ge=0, description="inputs smaller than this are built in the flow process")


def task_resources(**defaults):
    """The `task` field of a section whose build step may run as a Ray task (never fingerprinted)."""
    return resource(TaskConfig(**defaults), description="where the build step runs: Ray task resources")


class FlowConfig(Strict):
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(2.0, ge=0)
    lock_timeout_s: float = Field(600.0, ge=0, description="wait for another run holding the catalog")


class Expectation(Strict):
    type: str = Field(..., description="a Great Expectations expectation, e.g. expect_column_values_to_not_be_null")
    kwargs: dict = {}


class ValidationConfig(Strict):
    extra: dict[str, list[Expectation]] = Field(
        default_factory=dict, description="table name -> expectations added to its suite"
    )
