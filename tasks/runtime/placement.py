"""Build steps as Ray tasks: a stage whose assemble holds a whole corpus (an index build, a tree,
mining over the index) runs it in a Ray task of its own once its input is large, so the flow
process never holds the corpus.

The task gets a detached copy of the inputs (refs, catalog metas, the data root: no catalog
connection), writes its output tables as staged Parquet parts and its files under the data
root, and sends back only the small Assembled with the peak memory it used. Each task runs in
a fresh worker process (`max_calls=1`), so the peak is the build's own.
"""
from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING

import pyarrow as pa

from tasks.runtime.stage import Assembled, Output

if TYPE_CHECKING:
    from schemas.config import TaskConfig
    from tasks.runtime.inputs import Inputs
    from tasks.runtime.stage import Stage
    from tasks.runtime.storage import DataRoot

log = logging.getLogger(__name__)

PART_ROWS = 100_000


class PeakMemory:
    """The peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._proc, self.interval = psutil.Process(), interval
        self.start_mb = self.peak_mb = self._rss()
        self._stop = threading.Event()

    def _rss(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss())

    def __enter__(self) -> "PeakMemory":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss())


def in_task(stage: "Stage", inputs: "Inputs", units: pa.Table) -> "TaskConfig | None":
    """The task resources when this run's assemble goes to a Ray task, else None (in-process)."""
    task = stage.task()
    if task is None or inputs.root is None or not inputs.stored:
        return None
    return task if stage.task_size(inputs, units) >= task.local_below else None


def assemble(stage: "Stage", inputs: "Inputs", units: pa.Table, results: pa.Table | None, staging) -> Assembled:
    """assemble() in the flow process (peak memory measured), or in a Ray task when the stage asks."""
    task = in_task(stage, inputs, units)
    if task is None:
        with PeakMemory() as peak:
            assembled = stage.assemble(inputs, units, results)
        assembled.memory = {"where": "flow process", "peak_mb": round(peak.peak_mb, 1),
                            "grew_mb": round(peak.peak_mb - peak.start_mb, 1)}
        return assembled
    return _on_ray(stage, inputs, units, results, staging, task)


def _on_ray(stage, inputs, units, results, staging, task: "TaskConfig") -> Assembled:
    import ray

    from tasks.runtime.ray_session import ray_session

    with ray_session(inputs.config.ray.address, inputs.config.ray.num_cpus):
        options = {"num_cpus": task.cpus, "max_calls": 1, "max_retries": 0}
        if task.memory_mb:
            options["memory"] = task.memory_mb * 2**20
        fn = ray.remote(**options)(_assemble_task)
        log.info("%s: building in a Ray task (%g CPUs%s)", stage.name, task.cpus,
                 f", {task.memory_mb} MB" if task.memory_mb else "")
        # the run state units() left on the stage (`_*`, which pickling a stage leaves out) goes along:
        # the task continues this stage run, it does not start another
        run_state = {k: v for k, v in vars(stage).items() if k.startswith("_")}
        ref = fn.remote(stage, run_state, inputs.detached(), units, results, staging.root.uri, staging.relative())
        assembled, peak_mb, node = ray.get(ref)
    assembled.memory = {"where": "ray task", "node": node, "peak_mb": round(peak_mb, 1)}
    return assembled


def _assemble_task(stage, run_state: dict, inputs, units, results, root_uri: str, staging_dir: str):
    """Runs in a fresh Ray worker: assemble, then stage every output where the flow can publish it."""
    import ray

    from tasks.runtime.storage import DataRoot

    vars(stage).update(run_state)

    root = DataRoot(root_uri)
    inputs.root = root
    inputs.cache_root = root
    with PeakMemory() as peak:
        assembled = stage.assemble(inputs, units, results)
        assembled.tables = {name: stage_output(root, staging_dir, name, t) for name, t in assembled.tables.items()}
    assembled.model_calls += inputs.counters.model_calls  # shared services (query vectors) ran here
    assembled.cache_hits += inputs.counters.cache_hits
    return assembled, peak.peak_mb, ray.get_runtime_context().get_node_id()


def stage_output(root: "DataRoot", staging_dir: str, name: str, out: Output | pa.Table) -> Output:
    """An output as staged parts and staged files under the data root (nothing left in memory)."""
    out = out if isinstance(out, Output) else Output(out)
    folder = root.path(staging_dir, name.replace("/", "__"))
    parts = list(out.parts)
    if out.table is not None:
        table = out.table
        for n, start in enumerate(range(0, max(table.num_rows, 1), PART_ROWS)):
            path = root.path(folder, f"part-{n:08d}-{uuid.uuid4().hex[:8]}.parquet")
            root.write(table.slice(start, PART_ROWS), path)
            parts.append(path)
    files = {}
    for filename, local in out.attachments.items():
        dest = root.path(staging_dir, "_files", name.replace("/", "__"), uuid.uuid4().hex, filename)
        root.upload(local, dest)
        files[filename] = dest
    return Output(None, files, out.meta, out.identity, parts, out.mode, out.upsert_keys, out.deleted)
