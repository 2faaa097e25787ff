"""The Stage contract: what every stage declares, in one place.

A stage is a declaration, not wiring. It names its config `section`, the datasets it `reads`
and `writes`, and its work as three pure steps over Arrow tables:

    units(inputs)                     what needs doing, one row per unit, keyed by content
    work()                            the model work per batch (built once per actor), or None
    assemble(inputs, units, results)  the output tables and each unit's fate

The runner (tasks.runtime.runner) does everything else the same way for every stage: reads
the inputs, consults the work cache, sends missing units to the one actor pool or runs them
in-process, counts rows in / out / quarantined / deduplicated itself, publishes through the
one write path and records the stage run. A unit that raises inside the work is quarantined
with the exception, and the stage goes on.

The fingerprint is derived one way for every stage: the config section minus the fields
marked `resource` or `switch` in schemas/config/, plus the prompt files the stage reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal

import pyarrow as pa
from pydantic import BaseModel

from tasks.runtime.ids import fingerprint as _hash

if TYPE_CHECKING:
    from schemas.config import BuildConfig
    from tasks.runtime.inputs import Inputs

UNIT = "unit_id"  # column: the unit's identity (also its quarantine key)
KEY = "cache_key"  # column: content x work fingerprint; units sharing one share one model call
ERROR = "error"  # result column: why the work could not produce this unit


@dataclass(frozen=True)
class Read:
    """A dataset a stage reads. `name/*` reads every current dataset under that prefix (`*`: all)."""

    name: str
    required: bool = True

    @property
    def is_glob(self) -> bool:
        return self.name.endswith("*")

    def matches(self, dataset: str) -> bool:
        return dataset.startswith(self.name[:-1]) if self.is_glob else dataset == self.name


def optional(name: str) -> Read:
    return Read(name, required=False)


@dataclass(frozen=True)
class Resources:
    """How the work is sized and placed; never part of a fingerprint.

    `where`: `ray` for models that actors load once, `local` for work that holds no model
    (model-free checks, HTTP clients whose key must not travel to workers). `local_below`
    runs a small job in-process even when `where` is ray.
    """

    where: Literal["ray", "local"] = "ray"
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0  # asked for only when `device` allows a GPU and the cluster has one
    batch_size: int = 64
    device: str = "auto"
    threads: int | None = None
    local_below: int = 0
    uses_gpu: bool = True  # False: the work never touches torch devices (HTTP, model-free)

    @classmethod
    def of(cls, section: BaseModel, **over) -> "Resources":
        """Resources from a config section's resource fields (ModelBackend and EmbedConfig shapes)."""
        f = {k: getattr(section, k) for k in ("actors", "cpus_per_actor", "batch_size", "device", "local_below")
             if hasattr(section, k)}
        if hasattr(section, "threads_per_actor"):
            f["threads"] = section.threads_per_actor
        return cls(**(f | over))


@dataclass
class Work:
    """The per-batch model work: `factory(args, device)` is built once per actor (or once in the
    flow process) and called with Arrow batches of `columns` + cache_key; it returns one row per
    input row with cache_key, the `outputs` columns and `error` (NULL when it worked)."""

    factory: type
    args: dict  # JSON-serialisable; never a secret
    columns: list[str]
    outputs: pa.Schema
    resources: Resources = field(default_factory=Resources)
    cached: bool = True  # False: cheap model-free work whose results are not worth a cache shard
    model: bool = True  # False: model-free checks; their items are not counted as model calls

    def result_schema(self) -> pa.Schema:
        fields = [f.with_nullable(True) for f in self.outputs]  # an error row has no outputs
        return pa.schema([pa.field(KEY, pa.string())] + fields + [pa.field(ERROR, pa.string())])


@dataclass
class Units:
    """One row per unit (columns UNIT and KEY plus whatever the work and assemble need), the input
    rows that could not become a unit, each with a reason (they count as in and quarantined), and
    the input rows folded into an identical earlier one (in and deduplicated)."""

    table: pa.Table
    rejected: list[dict] = field(default_factory=list)  # {key, reason, payload}
    duplicates: list[str] = field(default_factory=list)  # keys of input rows identical to an earlier one
    kept: int = 0  # input rows whose output the previous version already holds (carried over)


@dataclass
class Output:
    """A table to publish, with files that belong to the version (an index, a state file)."""

    table: pa.Table | None = None
    attachments: dict[str, str] = field(default_factory=dict)  # file name -> local path
    meta: dict | None = None  # stored with the version in the catalog (datasets.meta)
    identity: dict | None = None  # what besides the rows makes two versions differ (an index's type)
    parts: list[str] = field(default_factory=list)  # staged Parquet parts (a streamed output)
    mode: str = "replace"  # replace: the rows are the new content; upsert: they replace rows of the same
    # key; delta: they are appended and `deleted` (row addresses of the current version) are removed;
    # overwrite: the rows are the new content, written whole without a diff (a rebuild)
    upsert_keys: list[str] | None = None
    deleted: list[int] = field(default_factory=list)


@dataclass
class Assembled:
    """What assemble made of the units: tables to publish and the fate of every unit.

    Every unit id must appear exactly once among `produced`, `quarantined` (by key) and
    `deduplicated`, or among the units the work failed on; the runner checks it.
    """

    tables: dict[str, pa.Table | Output] = field(default_factory=dict)
    produced: Iterable[str] = ()
    quarantined: list[dict] = field(default_factory=list)  # {key: unit id, reason, payload}
    deduplicated: Iterable[str] = ()
    model_calls: int = 0  # model work done inside assemble (tree summaries)
    cache_hits: int = 0
    notes: dict = field(default_factory=dict)
    memory: dict | None = None  # where assemble ran and its peak memory (set by the runner)


class Stage:
    """Base of every stage declaration. Subclasses set the class attributes and the three steps."""

    name: ClassVar[str]
    section: ClassVar[str | None] = None  # the config section it reads
    runs_as_task: ClassVar[bool] = False  # assemble may run as a Ray task sized by the section's `task`
    reads: ClassVar[tuple[Read, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()  # may use {section field} placeholders, e.g. tree_nodes/{name}
    incremental: ClassVar[bool] = False  # assemble may read the current versions of its own outputs
    description: ClassVar[str] = ""

    def __init__(self, config: "BuildConfig", **params: Any):
        self.config = config
        self.params = params  # invocation parameters (files of a CLI command); fingerprinted

    def __getstate__(self) -> dict:
        """What a worker gets of the stage: its config and parameters, not its run state (`_*`)."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    # -- declaration ------------------------------------------------------------------------
    @property
    def cfg(self) -> Any:
        return getattr(self.config, self.section) if self.section else None

    def enabled(self) -> bool:
        return bool(getattr(self.cfg, "enabled", True))

    def _values(self) -> dict:
        return self.cfg.model_dump() if isinstance(self.cfg, BaseModel) else {}

    def outputs(self) -> tuple[str, ...]:
        """The datasets it writes, placeholders filled from its section (tree_nodes/{name})."""
        values = self._values()
        return tuple(w.format(**values) for w in self.writes)

    def inputs(self) -> tuple[Read, ...]:
        """The datasets it reads, placeholders filled from its section (indexes/{index})."""
        values = self._values()
        return tuple(Read(r.name.format(**values), r.required) for r in self.reads)

    def fingerprint(self) -> str:
        """The section minus resource fields, the prompt files and the invocation parameters."""
        return _hash({"stage": self.name, "section": fingerprint_fields(self.cfg),
                      "prompts": self.prompt_shas(), "params": self.params})

    def work_fingerprint(self) -> str:
        """What a unit's model output depends on; the cache namespace. By default the fingerprint."""
        return self.fingerprint()

    def prompt_shas(self) -> dict[str, str]:
        """sha256 of each prompt file the work reads (a changed prompt is a changed stage)."""
        return {}

    def resources(self) -> Resources | None:
        work = self.work()
        return work.resources if work else None

    def task(self):
        """Task resources (schemas.config.TaskConfig) when assemble may run as a Ray task of its own
        (it holds a whole corpus: an index, a tree); None keeps it in the flow process. A stage that
        sets `runs_as_task` gets its section's `task` field."""
        return self.cfg.task if self.runs_as_task else None

    def task_size(self, inputs: "Inputs", units: pa.Table) -> int:
        """How large this run's build is, against the task's `local_below` (default: the units)."""
        return units.num_rows

    # -- the three steps ----------------------------------------------------------------------
    def units(self, inputs: "Inputs") -> Units:
        raise NotImplementedError

    def work(self) -> Work | None:
        return None

    def assemble(self, inputs: "Inputs", units: pa.Table, results: pa.Table | None) -> Assembled:
        raise NotImplementedError

    # -- streaming stages (units() yields chunks) -----------------------------------------------
    def batch_outputs(self, units: pa.Table, results: pa.Table) -> dict[str, pa.Table] | None:
        """Output rows of one batch of units and their results, where the work ran (a worker).
        A stage that defines it never sends its outputs through the flow process."""
        return None

    def output_mode(self, name: str) -> tuple[str, list[str] | None]:
        """How a streamed output's parts make the new version: replace, upsert (keys) or delta."""
        return "replace", None

    def finish(self, inputs: "Inputs") -> dict:
        """After the last chunk: per output, what else the publish needs ({name: {"deleted": [...]}})
        and notes (key "notes")."""
        return {}

    def payload(self, unit: dict) -> dict | None:
        """What a quarantine row keeps of a unit the work failed on (for a human to look at)."""
        return None

    def report(self, outcome) -> None:
        """Stage-specific Prefect artifacts and log lines after a successful publish (optional)."""


def fingerprint_fields(section: Any) -> Any:
    """A config section as plain data, without the fields marked `fingerprint: False` (resources,
    switches), at any depth."""
    if isinstance(section, BaseModel):
        out = {}
        for name, info in type(section).model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("fingerprint") is False or info.exclude:
                continue
            out[name] = fingerprint_fields(getattr(section, name))
        return out
    if isinstance(section, dict):
        return {str(k): fingerprint_fields(v) for k, v in section.items()}
    if isinstance(section, (list, tuple)):
        return [fingerprint_fields(v) for v in section]
    if isinstance(section, float) and section.is_integer():
        return int(section)  # 4096 and 4096.0 are the same setting
    return section


def resource_fields(section: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the resource fields of a section (for tests and the docs)."""
    out = []
    for name, info in type(section).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        value = getattr(section, name)
        if extra.get("resource"):
            out.append(prefix + name)
        elif isinstance(value, BaseModel):
            out += resource_fields(value, f"{prefix}{name}.")
    return out
