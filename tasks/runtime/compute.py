"""Where a stage's work runs: one Ray actor class for every stage, or the flow process.

`WorkActor` builds the stage's Work once (so a model loads once per actor) and calls it on
Arrow batches through `isolate`, which turns an exception on one item into that item's error
row instead of a failed batch. `compute()` is the one selector: `local` work (model-free, or an
HTTP client whose key must not reach workers) and jobs below `local_below` run in-process on a
cached Work; everything else streams through a Ray Data actor pool.
"""
from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from typing import Callable

import pyarrow as pa

from tasks.runtime.stage import ERROR, KEY, Work

log = logging.getLogger(__name__)

ROWS_PER_TASK = 8  # model batches per Ray task: amortises Ray's per-task overhead


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:1000]


def conform(result: pa.Table, batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """The work's answer as exactly one row per input key, in the result schema; a key the work
    did not answer gets an error row (never silently dropped)."""
    if ERROR not in result.column_names:
        result = result.append_column(ERROR, pa.nulls(result.num_rows, pa.string()))
    keys = batch[KEY].to_pylist()
    got = result[KEY].to_pylist()
    if got != keys:
        at = {k: i for i, k in enumerate(got)}
        missing = [k for k in keys if k not in at]
        rows = [at[k] for k in keys if k in at]
        result = result.take(pa.array(rows, pa.int64()))
        if missing:
            filler = {c.name: pa.nulls(len(missing), c.type) for c in schema}
            filler[KEY] = pa.array(missing, pa.string())
            filler[ERROR] = pa.array(["the work returned no result for this item"] * len(missing), pa.string())
            result = pa.concat_tables([result.select(schema.names).cast(schema), pa.table(filler, schema=schema)])
    return result.select(schema.names).cast(schema)


def isolate(work: Callable[[pa.Table], pa.Table], batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Run the work on a batch; when it raises, run the items one by one, so only the item that
    raises fails (its error names the exception type and message)."""
    if batch.num_rows == 0:
        return schema.empty_table()
    try:
        return conform(work(batch), batch, schema)
    except Exception as e:  # noqa: BLE001 - any failure is an item outcome, never a crashed stage
        if batch.num_rows == 1:
            return _error_rows(batch, schema, _error(e))
        log.warning("a batch of %d failed (%s); retrying item by item", batch.num_rows, _error(e)[:200])
    parts = []
    for i in range(batch.num_rows):
        one = batch.slice(i, 1)
        try:
            parts.append(conform(work(one), one, schema))
        except Exception as e:  # noqa: BLE001
            parts.append(_error_rows(one, schema, _error(e)))
    return pa.concat_tables(parts)


def _error_rows(batch: pa.Table, schema: pa.Schema, message: str) -> pa.Table:
    cols = {c.name: pa.nulls(batch.num_rows, c.type) for c in schema}
    cols[KEY] = batch[KEY]
    cols[ERROR] = pa.array([message] * batch.num_rows, pa.string())
    return pa.table(cols, schema=schema)


def set_threads(threads: int | None) -> None:
    """Ray caps OMP threads at the actor's CPU count; give torch what the config says."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(threads or os.cpu_count() or 1)


class ShardWriter:
    """Runs next to the work (in the worker) for streaming stages: caches the results and writes
    the stage's output rows as staged Parquet parts under the data root, so only keys and errors
    travel back to the flow process."""

    def __init__(self, stage, root_uri: str, staging: str, cache_dir: str | None, outputs: list[str]):
        self.stage, self.root_uri, self.staging, self.cache_dir, self.outputs = stage, root_uri, staging, \
            cache_dir, outputs
        self._root = None

    @property
    def root(self):
        if self._root is None:
            from tasks.runtime.storage import DataRoot

            self._root = DataRoot(self.root_uri)
        return self._root

    def run(self, work, batch: pa.Table, schema: pa.Schema) -> pa.Table:
        """The work on each distinct key of the batch once, then every unit's outputs written."""
        from tasks.runtime.tables import first_per_key

        out = isolate(work, first_per_key(batch, KEY), schema)
        return self(batch, out)

    def __call__(self, batch: pa.Table, out: pa.Table) -> pa.Table:
        import uuid

        import pyarrow.compute as pc

        if out.num_rows != batch.num_rows or out[KEY] != batch[KEY]:
            out = out.take(pc.index_in(batch[KEY], value_set=out[KEY]))  # one result row per unit
        ok = pc.is_null(out[ERROR])
        good = out.filter(ok)
        if good.num_rows:
            values = good.drop_columns([ERROR])
            if self.cache_dir is not None:
                path = self.root.path(self.cache_dir, f"shard-{uuid.uuid4().hex}.parquet")
                tmp = self.root.path(self.cache_dir, f"_tmp-{uuid.uuid4().hex}.parquet")
                self.root.write(values, tmp)
                self.root.move(tmp, path)
            for name, table in (self.stage.batch_outputs(batch.filter(ok), values) or {}).items():
                if table.num_rows:
                    self.root.write(table, self.root.path(self.staging, name.replace("/", "__"),
                                                          f"part-{uuid.uuid4().hex}.parquet"))
        return out.select([KEY, ERROR])


class WorkActor:
    """The one Ray Data actor: builds a stage's Work once, then serves its batches."""

    def __init__(self, factory: type, args_json: str, device: str, threads: int | None, schema: pa.Schema,
                 writer: ShardWriter | None = None):
        set_threads(threads)
        self.work = factory(json.loads(args_json), device)
        self.schema = schema
        self.writer = writer

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.writer is not None:
            return self.writer.run(self.work, batch, self.schema)
        return isolate(self.work, batch, self.schema)


@lru_cache(maxsize=8)
def local_work(factory: type, args_json: str, device: str):
    """An in-process Work, built once per (stage work, arguments, device) in this process."""
    return factory(json.loads(args_json), device)


def compute(stage: str, work: Work, todo: pa.Table, on_batch: Callable[[pa.Table], None],
            writer: ShardWriter | None = None, passthrough: list[str] | None = None) -> int:
    """Run `work` on every row of `todo`, handing result batches to `on_batch` as they finish.
    With a `writer`, results are cached and outputs written where the work runs, and `on_batch`
    gets only keys and errors. Returns the number of items sent to the model."""
    if todo.num_rows == 0:
        return 0
    res = work.resources
    schema = work.result_schema()
    cols = [KEY] + [c for c in work.columns if c != KEY]
    cols += [c for c in (passthrough or []) if c not in cols]
    todo = todo.select(cols)
    args_json = json.dumps(work.args, sort_keys=True, default=str)
    if res.where == "local" or todo.num_rows < res.local_below:
        return _in_process(stage, work, todo, args_json, schema, on_batch, writer)
    return _on_ray(stage, work, todo, args_json, schema, on_batch, writer)


def _local_device(res) -> str:
    if not res.uses_gpu or res.device == "cpu":
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def _in_process(stage, work: Work, todo, args_json, schema, on_batch, writer=None) -> int:
    device = _local_device(work.resources)
    try:
        instance = local_work(work.factory, args_json, device)
    except Exception as e:  # noqa: BLE001 - a work that cannot even be built fails every item with why
        log.error("%s: could not build its work: %s", stage, _error(e))
        raise
    size = max(1, work.resources.batch_size)
    for i in range(0, todo.num_rows, size):
        batch = todo.slice(i, size)
        on_batch(writer.run(instance, batch, schema) if writer is not None else isolate(instance, batch, schema))
    return todo.num_rows


def _on_ray(stage, work: Work, todo, args_json, schema, on_batch, writer=None) -> int:
    import ray.data
    from ray.data import ActorPoolStrategy

    from tasks.runtime.ray_session import gpus_for, quiet_ray_data, torch_device

    quiet_ray_data()
    res = work.resources
    num_gpus = gpus_for(res.device, stage, res.gpus_per_actor) if res.uses_gpu else 0.0
    rows = res.batch_size * ROWS_PER_TASK
    if todo.num_rows < rows * res.actors:  # small jobs: spread over the pool rather than one task
        rows = max(res.batch_size, -(-todo.num_rows // res.actors))
    chunks = [todo.slice(i, rows) for i in range(0, todo.num_rows, rows)]
    ds = ray.data.from_arrow(chunks).map_batches(
        WorkActor, fn_constructor_kwargs={"factory": work.factory, "args_json": args_json,
                                          "device": torch_device(num_gpus), "threads": res.threads,
                                          "schema": schema, "writer": writer},
        compute=ActorPoolStrategy(size=min(res.actors, len(chunks))), batch_size=rows,
        batch_format="pyarrow", num_cpus=res.cpus_per_actor, num_gpus=num_gpus or None, zero_copy_batch=True)
    for out in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        on_batch(out)
    return todo.num_rows
