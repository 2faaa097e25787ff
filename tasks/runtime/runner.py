"""The one runner: executes any Stage the same way.

    units = stage.units(inputs)                        what needs doing, keyed by content
    cache lookup -> compute(missing)                   the one actor pool, or in-process
    assembled = stage.assemble(inputs, units, results)
    account(...)                                       rows in = out + quarantined + deduplicated
    write.commit(...)                                  quarantine, validated publish, stage_runs

The runner takes the counts itself from the units and the fate of each unit id, so a stage
cannot report a balance it did not keep: a unit that is neither produced, quarantined nor
deduplicated (or is two of them) is refused with the four numbers.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import QUARANTINE
from tasks.runtime.accounting import AccountingError, storable
from tasks.runtime.cache import WorkCache
from tasks.runtime.compute import ShardWriter, compute
from tasks.runtime.inputs import Inputs
from tasks.runtime.stage import ERROR, KEY, UNIT, Assembled, Output, Stage, Units, Work
from tasks.runtime.tables import first_per_key

if TYPE_CHECKING:
    from tasks.runtime.catalog import DatasetVersion
    from tasks.runtime.lifecycle import Run

log = logging.getLogger(__name__)

FLUSH_ROWS = 4096  # results reach the cache at least every this many rows...
FLUSH_SECONDS = 30.0  # ...or this often, so a killed run leaves its finished work behind


@dataclass
class Outcome:
    """A stage's assembled output with the counts the runner took."""

    stage: str
    tables: dict[str, Output]
    quarantine: pa.Table
    rows_in: int
    rows_out: int
    rows_deduplicated: int
    model_calls: int
    cache_hits: int
    notes: dict = field(default_factory=dict)
    memory: dict | None = None  # where the outputs were built, and the peak memory there
    staging: "Staging | None" = None  # a streaming stage's staged parts, removed after the publish

    @property
    def rows_quarantined(self) -> int:
        return self.quarantine.num_rows

    def table(self, name: str) -> pa.Table | None:
        """An output as one table (a streamed output's staged parts, read back: tests, small outputs)."""
        out = self.tables.get(name)
        if out is None:
            return None
        if out.table is not None:
            return out.table
        if not out.parts:
            from schemas.tables import embeddings_schema, schema_for

            return (embeddings_schema(1) if name.startswith("embeddings/") else schema_for(name)).empty_table()
        import pyarrow.dataset as pads

        return pads.dataset(out.parts, filesystem=self.staging.root.fs, format="parquet").to_table()

    def check(self) -> "Outcome":  # the runner refused it already if it did not balance
        return self

    def counts(self) -> dict:
        return {"stage": self.stage, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "rows_quarantined": self.rows_quarantined, "rows_deduplicated": self.rows_deduplicated,
                "model_calls": self.model_calls, "cache_hits": self.cache_hits}


class ResultSink:
    """Receives result batches: outputs go to the work cache in shards (by rows and by time),
    errors are kept by key for the quarantine and are never cached, so the next run retries them."""

    def __init__(self, cache: WorkCache | None, work: Work, progress=None):
        self.cache, self.work, self.progress = cache, work, progress
        self.columns = [f.name for f in work.outputs]
        self.pending: list[pa.Table] = []
        self.kept: list[pa.Table] = []  # uncached work: results stay in memory
        self.failed: dict[str, str] = {}
        self.last_flush = time.monotonic()
        self.done = 0

    def __call__(self, out: pa.Table) -> None:
        ok = pc.is_null(out[ERROR])
        bad = out.filter(pc.invert(ok))
        self.failed.update(zip(bad[KEY].to_pylist(), bad[ERROR].to_pylist()))
        good = out.filter(ok).select([KEY] + self.columns)
        self.done += out.num_rows
        if self.progress is not None:
            self.progress.advance(out.num_rows)
        if self.cache is None:
            self.kept.append(good)
            return
        self.pending.append(good)
        if (sum(t.num_rows for t in self.pending) >= FLUSH_ROWS
                or time.monotonic() - self.last_flush >= FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.cache is not None and self.pending:
            self.cache.append(pa.concat_tables(self.pending))
            self.pending.clear()


@dataclass
class WorkResult:
    results: pa.Table | None  # KEY + outputs, one row per key that worked
    failed: dict[str, str]  # KEY -> error
    model_calls: int = 0
    cache_hits: int = 0
    computed: set | None = None  # keys whose outputs the workers wrote themselves (streaming stages)


def run_work(stage: Stage, work: Work, units: pa.Table, cache: WorkCache | None, progress=None,
             writer: ShardWriter | None = None) -> WorkResult:
    """Results for every distinct key of the units: from the cache, else from the work. With a
    `writer`, the work caches and writes outputs itself; only the cached results come back."""
    keys = pc.unique(units[KEY])
    cached_keys: set[str] = set()
    if cache is not None and work.cached:
        cached_keys = cache.known(keys)
    missing = pa.array(sorted(set(keys.to_pylist()) - cached_keys), pa.string())
    todo = units.filter(pc.is_in(units[KEY], value_set=missing))
    # units sharing a key share one model call; streaming stages send them all (side by side), so
    # the worker writes every unit's outputs
    todo = todo.sort_by(KEY) if writer is not None else first_per_key(todo, KEY)
    sink = ResultSink(cache if work.cached and writer is None else None, work, progress)
    if writer is not None:
        sink.columns = []  # results stay with the worker; only errors come back
    if progress is not None:
        progress.start(todo.num_rows) if writer is None else progress.extend(todo.num_rows)
    passthrough = [c for c in units.column_names if c not in (UNIT,)] if writer is not None else None
    try:
        calls = compute(stage.name, work, todo, sink, writer, passthrough)
    finally:
        sink.flush()  # what finished survives a crash: the next run resumes from it
    if writer is not None:
        results = cache.lookup_table(pa.array(sorted(cached_keys), pa.string()), [f.name for f in work.outputs]) \
            if cached_keys and cache is not None else None
        got = set(keys.to_pylist()) - set(sink.failed)
        return WorkResult(results, sink.failed, len(missing) if work.model else 0, len(cached_keys), computed=got)
    if work.cached and cache is not None:
        results = cache.lookup_table(keys, [f.name for f in work.outputs])
    else:
        results = pa.concat_tables(sink.kept) if sink.kept else None
    got = set(results[KEY].to_pylist()) if results is not None else set()
    lost = set(missing.to_pylist()) - got - set(sink.failed)
    for k in lost:  # sent to the work, came back with neither a result nor an error
        sink.failed[k] = "the work returned no result for this item (an actor lost it)"
    return WorkResult(results, sink.failed, calls if work.model else 0, len(cached_keys))


def execute(stage: Stage, inputs: Inputs, cache: WorkCache | None = None, progress=None,
            staging: "Staging | None" = None) -> Outcome:
    """Units, work, assemble and the runner's own accounting; publishes nothing. A stage whose
    units() yields chunks is run chunk by chunk, its outputs staged as Parquet parts."""
    units = stage.units(inputs)
    if not isinstance(units, Units):
        return _execute_chunks(stage, inputs, units, cache, progress, staging)
    _check_units(stage, units)
    work = stage.work()
    wr = WorkResult(None, {})
    table = units.table
    if work is not None and table.num_rows:
        wr = run_work(stage, work, table, cache, progress)
    ok = table
    if wr.failed:
        ok = table.filter(pc.invert(pc.is_in(table[KEY], value_set=pa.array(sorted(wr.failed), pa.string()))))
    from tasks.runtime import placement

    staging = staging or _scratch_staging(stage, inputs)
    assembled = placement.assemble(stage, inputs, ok, wr.results, staging)
    outcome = account(stage, units, wr, assembled, inputs)
    outcome.staging = staging
    return outcome


def _scratch_staging(stage: Stage, inputs: Inputs) -> "Staging | None":
    return Staging(inputs.root, stage.name) if inputs.root is not None else None


class Staging:
    """Where a streaming stage's output parts go while it runs: DATA_ROOT/_staging/<id>/<stage>/<output>/."""

    def __init__(self, root, stage: str, run_id: str | None = None):
        import uuid

        self.root = root
        self.dir = root.path("_staging", run_id or uuid.uuid4().hex, stage)

    def relative(self) -> str:
        return self.root.relative(self.dir)

    def write(self, output: str, table: pa.Table) -> None:
        import uuid

        if table.num_rows:  # numbered, so the parts read back in the order they were written
            self._written = getattr(self, "_written", 0) + 1
            self.root.write(table, self.root.path(self.dir, output.replace("/", "__"),
                                                  f"part-{self._written:08d}-{uuid.uuid4().hex[:8]}.parquet"))

    def parts(self, output: str) -> list[str]:
        return self.root.list_files(self.root.path(self.dir, output.replace("/", "__")))

    def cleanup(self) -> None:
        self.root.delete_dir(self.dir)


def _execute_chunks(stage: Stage, inputs: Inputs, chunks, cache, progress, staging: "Staging | None") -> Outcome:
    """Run a streaming stage chunk by chunk with bounded memory: each chunk's units go through the
    cache and the work (which writes its outputs where it runs, when the stage says how), the
    chunk is accounted on its own, and its output parts are staged for the publish."""
    import tempfile

    from tasks.runtime.compute import ShardWriter
    from tasks.runtime.storage import DataRoot

    if staging is None:
        root = inputs.cache_root or DataRoot(tempfile.mkdtemp(prefix="corpusforge-staging-"))
        staging = Staging(root, stage.name)
    work = stage.work()
    streams = work is not None and type(stage).batch_outputs is not Stage.batch_outputs
    writer = None
    if streams:
        cache_dir = staging.root.relative(cache.dir) if cache is not None and work.cached else None
        writer = ShardWriter(stage, staging.root.uri, staging.relative(), cache_dir, list(stage.outputs()))
    if progress is not None:
        progress.start(0)
    total: Outcome | None = None
    base_calls, base_hits = inputs.counters.model_calls, inputs.counters.cache_hits
    for units in chunks:
        _check_units(stage, units)
        wr = WorkResult(None, {})
        if work is not None and units.table.num_rows:
            wr = run_work(stage, work, units.table, cache, progress, writer)
        table = units.table
        ok = table if not wr.failed else table.filter(
            pc.invert(pc.is_in(table[KEY], value_set=pa.array(sorted(wr.failed), pa.string()))))
        if streams and wr.results is not None and wr.results.num_rows:
            # cached results: the workers did not see them, so their outputs are written here
            cached_units = ok.filter(pc.is_in(ok[KEY], value_set=wr.results[KEY]))
            at = pc.index_in(cached_units[KEY], value_set=wr.results[KEY])
            for name, t in (stage.batch_outputs(cached_units, wr.results.take(at)) or {}).items():
                staging.write(name, t)
        assembled = stage.assemble(inputs, ok, None if streams else wr.results)
        for name, t in assembled.tables.items():
            staging.write(name, t.table if isinstance(t, Output) else t)
        assembled.tables = {}
        chunk = account(stage, units, wr, assembled, inputs, counters=False)
        chunk.rows_in += units.kept
        chunk.rows_out += units.kept
        chunk.cache_hits += units.kept
        total = chunk if total is None else _merge(total, chunk)
    if total is None:
        total = Outcome(stage.name, {}, QUARANTINE.empty_table(), 0, 0, 0, 0, 0)
    finished = stage.finish(inputs)
    total.notes |= finished.pop("notes", {})
    for name in stage.outputs():
        mode, keys = stage.output_mode(name)
        extra = finished.get(name, {})
        parts = staging.parts(name)
        if parts or extra.get("deleted") or mode == "replace" or inputs.previous_ref(name) is None:
            total.tables[name] = Output(parts=parts, mode=mode, upsert_keys=keys, deleted=extra.get("deleted", []),
                                        meta=extra.get("meta"), attachments=extra.get("attachments", {}))
    total.model_calls += inputs.counters.model_calls - base_calls
    total.cache_hits += inputs.counters.cache_hits - base_hits
    total.staging = staging
    return total


def _merge(a: Outcome, b: Outcome) -> Outcome:
    a.quarantine = pa.concat_tables([a.quarantine, b.quarantine])
    a.rows_in += b.rows_in
    a.rows_out += b.rows_out
    a.rows_deduplicated += b.rows_deduplicated
    a.model_calls += b.model_calls
    a.cache_hits += b.cache_hits
    a.notes |= b.notes
    return a


def _check_units(stage: Stage, units: Units) -> None:
    t = units.table
    for col in (UNIT, KEY):
        if col not in t.column_names:
            raise TypeError(f"stage {stage.name}: units() must return a table with a '{col}' column")
    if t.num_rows and pc.count_distinct(t[UNIT]).as_py() != t.num_rows:
        raise AccountingError(f"stage {stage.name}: unit ids are not unique")


def account(stage: Stage, units: Units, wr: WorkResult, assembled: Assembled, inputs: Inputs,
            counters: bool = True) -> Outcome:
    """Count every unit's fate; refuse an assembly where the numbers do not add up."""
    ids = units.table[UNIT].to_pylist()
    all_ids = set(ids)
    q_rows = [{"stage": stage.name, "key": str(r["key"]), "reason": r["reason"], "payload": _payload(r.get("payload"))}
              for r in units.rejected]
    failed_ids = set()
    if wr.failed:
        failed_rows = units.table.filter(pc.is_in(units.table[KEY], value_set=pa.array(sorted(wr.failed), pa.string())))
        for unit in failed_rows.to_pylist():
            failed_ids.add(unit[UNIT])
            q_rows.append({"stage": stage.name, "key": str(unit[UNIT]), "reason": wr.failed[unit[KEY]],
                           "payload": _payload(stage.payload(unit))})
    produced = set(map(str, assembled.produced))
    dedup = set(map(str, assembled.deduplicated))
    asm_q = [str(r["key"]) for r in assembled.quarantined]
    q_rows += [{"stage": stage.name, "key": str(r["key"]), "reason": r["reason"], "payload": _payload(r.get("payload"))}
               for r in assembled.quarantined]
    q_rows = [r | {"key": storable(r["key"]), "reason": storable(str(r["reason"]))} for r in q_rows]
    rows_in = len(ids) + len(units.rejected) + len(units.duplicates)
    rows_out, rows_dedup, rows_q = len(produced), len(dedup) + len(units.duplicates), len(q_rows)
    fates = [produced, set(asm_q), dedup, failed_ids]
    problems = []
    if len(asm_q) != len(set(asm_q)):
        problems.append("a unit was quarantined twice")
    unknown = set().union(*fates) - all_ids
    if unknown:
        problems.append(f"{len(unknown)} ids are not units (e.g. {sorted(unknown)[:3]})")
    overlap = sum(len(a & b) for i, a in enumerate(fates) for b in fates[i + 1:])
    if overlap:
        problems.append(f"{overlap} units have two fates")
    unaccounted = all_ids - set().union(*fates)
    if unaccounted:
        problems.append(f"{len(unaccounted)} units vanished (e.g. {sorted(unaccounted)[:3]})")
    if problems or rows_in != rows_out + rows_q + rows_dedup:
        raise AccountingError(
            f"stage {stage.name} lost rows: in={rows_in} but out={rows_out} + quarantined={rows_q} + "
            f"deduplicated={rows_dedup} = {rows_out + rows_q + rows_dedup}" + (f" ({'; '.join(problems)})" if problems else ""))
    tables = {n: (t if isinstance(t, Output) else Output(t)) for n, t in assembled.tables.items()}
    service_calls = inputs.counters.model_calls if counters else 0
    service_hits = inputs.counters.cache_hits if counters else 0
    return Outcome(stage.name, tables, pa.Table.from_pylist(q_rows, schema=QUARANTINE), rows_in, rows_out, rows_dedup,
                   wr.model_calls + assembled.model_calls + service_calls,
                   wr.cache_hits + assembled.cache_hits + service_hits, assembled.notes, assembled.memory)


def _payload(p) -> str | None:
    if p is None or isinstance(p, str):
        return p
    from tasks.runtime.accounting import payload_json

    return payload_json(p)


# ---- the whole stage against a run --------------------------------------------------------------
def run_stage(run: "Run", stage: Stage, refs: dict[str, "DatasetVersion"] | None = None) -> dict[str, "DatasetVersion"]:
    """Read the declared inputs (the refs given, else the current versions), execute, publish
    through the one write path and record the stage run, on success and on failure."""
    from tasks.runtime import write
    from tasks.runtime.catalog import now

    started_at, t0 = now(), time.perf_counter()
    logger = run.logger
    try:
        inputs = resolve_inputs(run, stage, refs or {})
        cache = WorkCache(run.root, stage.name, stage.work_fingerprint())
        staging = Staging(run.root, stage.name, run.run_id)
        with run.progress(stage.name) as progress:
            outcome = execute(stage, inputs, cache, progress, staging)
    except BaseException as e:
        write.record_failure(run, stage, e, started_at=started_at, started=t0)
        raise
    parents = [r for r in inputs.refs.values() if r is not None]
    try:
        published = write.commit(run, stage, outcome, parents=parents, started_at=started_at, started=t0)
    finally:
        if outcome.staging is not None:
            outcome.staging.cleanup()
    for name in stage.outputs():  # unchanged outputs: their current versions, so edges stay whole
        if name not in published and (ref := run.catalog.current(name)) is not None:
            published[name] = ref
    try:
        stage.report(outcome)
    except Exception as e:  # noqa: BLE001 - an artifact is a view, never a reason to fail the stage
        logger.warning("%s: no report (%s)", stage.name, e)
    return published


def resolve_inputs(run: "Run", stage: Stage, refs: dict) -> Inputs:
    """The declared reads: refs passed by the flow first, else the catalog's current versions."""
    chosen: dict = {}
    current = run.catalog.current_all()
    for read in stage.inputs():
        names = [n for n in set(refs) | set(current) if read.matches(n)] if read.is_glob else [read.name]
        for name in sorted(names):
            ref = refs.get(name) or current.get(name)
            if ref is not None:
                chosen[name] = ref
        if read.required and not any(read.matches(n) for n in chosen):
            raise LookupError(f"stage {stage.name} needs the dataset '{read.name}', which the catalog "
                              f"{run.catalog.path} does not have yet; run the stage that writes it first")
    previous = {}
    if stage.incremental:  # a previous version that lost data files is no base for a delta: recompute
        from tasks.runtime.publish import intact

        previous = {n: current[n] for n in stage.outputs() if n in current and intact(run.root, current[n])}
    return Inputs(run.config, chosen, run=run, previous=previous, params=stage.params)
