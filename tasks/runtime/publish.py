"""Atomic, validated publish of a dataset version (called only by the write path, tasks.runtime.write).

1. diff the new content against the current version by natural key and row hash, in DuckDB
   out of core: only new or changed rows are staged as fragments, removed or changed rows get
   deletion files (`replace`); an `upsert` replaces only the keys it brings; a `delta` is
   appended as it is, with the deletions its stage computed; an `overwrite` (a rebuilt index)
   becomes the whole new version without a diff;
2. validate: row-level expectations on each new shard (on every kept shard too when the suite
   changed), and dataset-wide checks (key uniqueness) in DuckDB over the would-be version;
3. commit the Lance version (one transaction: new fragments + deletion files);
4. in one catalog transaction: insert the version, flip the current flag, add lineage.

A failure before step 4 leaves the previous version current (a Lance version the catalog never
recorded is rolled back by the next publish). No change means no new version.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow as pa

from schemas.expectations import suite_for
from schemas.tables import keys_for, schema_fingerprint, schema_for
from tasks.runtime import versions
from tasks.runtime.catalog import Catalog, DatasetVersion, json_dumps, now
from tasks.runtime.sql import quote_ident, quote_literal
from tasks.runtime.stage import Output
from tasks.runtime.storage import DataRoot
from tasks.runtime.validation import ValidationFailed, ValidationReport, validate

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    dataset: DatasetVersion
    published: bool  # False when the content equals the current version
    validation: dict


def content_hash(name: str, table: pa.Table, identity: dict | None = None) -> str:
    """Order-independent content hash of a table: its IPC bytes sorted by its natural key."""
    ordered = table.sort_by([(k, "ascending") for k in keys_for(name)]).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ordered.schema) as w:
        w.write_table(ordered, max_chunksize=max(ordered.num_rows, 1))
    h = hashlib.sha256(sink.getvalue().to_pybytes())
    if identity:
        h.update(json_dumps(identity).encode())
    return h.hexdigest()


def conform(name: str, table: pa.Table) -> pa.Table:
    """Cast a table to its contract; a missing or extra column is refused with its name."""
    schema = schema_for(name, table)
    missing = [f.name for f in schema if f.name not in table.column_names]
    extra = [c for c in table.column_names if c not in schema.names]
    if missing or extra:
        raise ValueError(f"table for '{name}' does not match its contract: missing={missing} extra={extra}")
    return table.select(schema.names).cast(schema)


def suite_fingerprint(name: str, extra: list[dict] | None) -> str:
    return hashlib.sha256(json_dumps([suite_for(name), extra or []]).encode()).hexdigest()[:16]


def publish(catalog: Catalog, root: DataRoot, name: str, output: Output | pa.Table, *,
            parents: list[DatasetVersion] = (), run_id: str | None = None, stage: str | None = None,
            fingerprint: str | None = None, extra_expectations: list[dict] | None = None) -> PublishResult:
    from tasks.runtime.sql import check_dataset_name

    check_dataset_name(name)
    out = output if isinstance(output, Output) else Output(output)
    current = catalog.current(name)
    cur_ds = _open_current(root, current) if current is not None else None
    con = versions.scratch_db()
    try:
        schema = _source(con, name, out, root, cur_ds)
        if cur_ds is not None and cur_ds.schema.remove_metadata() != schema.remove_metadata():
            cur_ds = None  # the contract changed (a new embedding dimension): a fresh version, not a diff
        mode = out.mode if cur_ds is not None else "replace"
        overwrite = cur_ds is None or mode == "overwrite"
        deleted = _plan(con, name, schema, None if mode == "overwrite" else cur_ds, mode, out)
        suite_fp = suite_fingerprint(name, extra_expectations)
        identity = json_dumps(out.identity) if out.identity else None
        prev_meta = catalog.meta(current.name, current.version) if current is not None else {}
        added = con.execute("SELECT count(*) FROM added").fetchall()[0][0]
        same_rows = not overwrite and not added and not deleted
        if same_rows and prev_meta.get("_identity") == identity and prev_meta.get("_suite") == suite_fp:
            log.info("%s unchanged (%d rows); keeping %s", name, current.row_count, current.ref)
            return PublishResult(current, False, {"success": True, "skipped": "unchanged"})
        changes = versions.Changes(rows_added=added, deleted_addrs=deleted)
        if deleted:
            changes.updated, changes.removed, changes.rows_deleted = versions.delete_rows(cur_ds, deleted)
        uri = root.lance_uri(name)
        reports = _stage_added(con, name, schema, uri, root, changes, extra_expectations, fresh=overwrite)
        if not overwrite and prev_meta.get("_suite") != suite_fp:
            reports += [validate(name, pa.Table.from_batches([b]), extra_expectations) for b in _kept(cur_ds, changes)]
        report = _merge_reports(name, reports)
        if not report.success:
            raise ValidationFailed(report)
    finally:
        con.close()
    if cur_ds is None or not same_rows:
        table_version = versions.commit(uri, changes, schema, current.table_version if current else None,
                                        root.storage_options, overwrite=overwrite)
    else:
        table_version = current.table_version
    return _record(catalog, root, name, uri, table_version, schema, out, identity, suite_fp, report, parents,
                   run_id, stage, fingerprint, changes)


def _record(catalog, root, name, uri, table_version, schema, out, identity, suite_fp, report, parents, run_id,
            stage, fingerprint, changes) -> PublishResult:
    """The catalog side of a publish: one transaction (version row, current flag, lineage)."""
    ds = versions.open_dataset(uri, table_version, root.storage_options)
    attachments = _upload(root, name, out.attachments)
    meta = (out.meta or {}) | {"_identity": identity, "_suite": suite_fp}
    if attachments:
        meta["_attachments"] = attachments
    chash = hashlib.sha256((versions.version_hash(ds) + (identity or "") + json_dumps(attachments)).encode()).hexdigest()
    rows = ds.count_rows()
    with catalog.connect() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            version = catalog.next_version(con, name)
            con.execute("UPDATE datasets SET is_current = false WHERE name = ? AND is_current", [name])
            con.execute(
                "INSERT INTO datasets (name, version, path, row_count, content_hash, schema_fingerprint, "
                "validation, is_current, run_id, stage, fingerprint, created_at, meta, table_version) "
                "VALUES (?,?,?,?,?,?,?,true,?,?,?,?,?,?)",
                [name, version, root.relative(uri), rows, chash, schema_fingerprint(schema),
                 json_dumps(report.to_json()), run_id, stage, fingerprint, now(),
                 json.dumps(meta, sort_keys=True, default=str), table_version],
            )
            for p in parents:
                con.execute("INSERT INTO lineage VALUES (?,?,?,?)", [name, version, p.name, p.version])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    ref = DatasetVersion(name, version, root.relative(uri), rows, chash, table_version)
    log.info("published %s (%d rows: +%d, -%d)", ref.ref, rows, changes.rows_added, changes.rows_deleted)
    return PublishResult(ref, True, report.to_json())


def _source(con, name: str, out: Output, root: DataRoot, cur_ds) -> pa.Schema:
    """Register the new content as the relation `src` (an in-memory table or staged parts, read
    in place) and return its contract."""
    if out.table is not None:
        table = conform(name, out.table)
        con.register("src_in", table)
        schema = table.schema
    elif out.parts:
        import pyarrow.dataset as pads

        parts = pads.dataset(out.parts, filesystem=root.fs, format="parquet")
        if root.is_local:  # DuckDB's own scan: its sort and diff then spill within its memory limit
            files = ", ".join(quote_literal(p) for p in out.parts)
            con.execute(f"CREATE TEMP VIEW src_in AS SELECT * FROM read_parquet([{files}], union_by_name = true)")
        else:  # an object store: pyarrow reads it (DuckDB would need its httpfs extension)
            con.register("src_in", parts)
        schema = schema_for(name, parts.head(1)) if name.split("/")[0] == "embeddings" else schema_for(name)
    else:  # nothing staged: empty new content (or a delta with deletions only)
        schema = cur_ds.schema if cur_ds is not None else schema_for(name, _empty_vectors())
        con.register("src_in", schema.empty_table())
    cols = ", ".join(_column(f) for f in schema)
    con.execute(f"CREATE TEMP VIEW src AS SELECT {cols} FROM src_in")
    return schema


_ARRAY_ITEMS = {pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.int32(): "INTEGER", pa.int64(): "BIGINT"}


def _column(f: pa.Field) -> str:
    """A column of `src`; fixed-size lists (vectors) as DuckDB arrays, however the parts stored them
    (Parquet has no fixed-size list), so that they hash like the current version's rows."""
    q = quote_ident(f.name)
    if pa.types.is_fixed_size_list(f.type) and f.type.value_type in _ARRAY_ITEMS:
        return f"CAST({q} AS {_ARRAY_ITEMS[f.type.value_type]}[{f.type.list_size}]) AS {q}"
    return q


def _empty_vectors() -> pa.Table:
    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), 1)})


def _hash(columns: list[str]) -> str:
    return "hash(" + ", ".join(quote_ident(c) for c in columns) + ")"


TAKE_BELOW = 0.25  # an upsert matching more of the current rows than this reads them in one scan


def _plan(con, name: str, schema: pa.Schema, cur_ds, mode: str, out: Output) -> list[int]:
    """Create the relation `added` (rows to append) and return the row addresses to delete.

    A delta or an upsert reads only the current version's key columns, and an upsert then hashes
    only the rows its keys can match: a small refresh of a large dataset costs what it brings."""
    keys = keys_for(name)
    k = ", ".join(quote_ident(c) for c in keys)
    cols = schema.names
    _unique(con, name, keys, "src")
    if cur_ds is None:
        con.execute("CREATE TEMP VIEW added AS SELECT * FROM src")
        return []
    batch = min(65_536, versions.shard_rows(cur_ds.schema))
    upsert = list(out.upsert_keys or keys)
    u = ", ".join(quote_ident(c) for c in upsert)
    if mode in ("delta", "upsert"):
        key_cols = list(dict.fromkeys(keys + (upsert if mode == "upsert" else [])))
        con.register("cur_keys", cur_ds.scanner(columns=key_cols, with_row_address=True, batch_size=batch).to_reader())
        con.execute(f"CREATE TEMP TABLE cur_k AS SELECT _rowaddr, {', '.join(quote_ident(c) for c in key_cols)} "
                    "FROM cur_keys")
    if mode == "delta":
        gone = pa.array(out.deleted, pa.uint64())
        con.register("gone", pa.table({"_rowaddr": gone}))
        clash = con.execute(f"SELECT count(*) FROM (SELECT {k} FROM cur_k ANTI JOIN gone USING (_rowaddr)) "
                            f"JOIN src USING ({k})").fetchall()[0][0]
        if clash:
            raise ValidationFailed(ValidationReport(name, False, clash, [{
                "expectation": "unique_natural_key", "column": keys, "unexpected_count": clash,
                "unexpected_sample": [], "detail": f"{clash} appended rows repeat a key already in {name}"}]))
        con.execute("CREATE TEMP VIEW added AS SELECT * FROM src")
        return list(out.deleted)
    con.register("cur_rows", _current_rows(con, cur_ds, cols, k, u, batch) if mode == "upsert" else
                 cur_ds.scanner(columns=cols, with_row_address=True, batch_size=batch).to_reader())
    con.execute(f"CREATE TEMP TABLE cur_h AS SELECT _rowaddr, {k}, {_hash(cols)} AS __h FROM cur_rows")
    con.execute(f"CREATE TEMP TABLE src_h AS SELECT {k}, {_hash(cols)} AS __h FROM src")
    con.execute(f"CREATE TEMP VIEW added AS SELECT * EXCLUDE (__h) FROM (SELECT *, {_hash(cols)} AS __h FROM src) "
                f"ANTI JOIN cur_h USING ({k}, __h)")
    if mode == "upsert":  # rows of the same key are replaced; `deleted` names rows that are gone
        sql = (f"SELECT _rowaddr FROM (SELECT * FROM cur_h SEMI JOIN src_h USING ({u})) "
               f"ANTI JOIN src_h USING ({k}, __h)")
        if out.deleted:
            con.register("gone", pa.table({"_rowaddr": pa.array(out.deleted, pa.uint64())}))
            sql = f"SELECT DISTINCT _rowaddr FROM ({sql} UNION ALL SELECT _rowaddr FROM gone)"
    else:
        sql = f"SELECT _rowaddr FROM cur_h ANTI JOIN src_h USING ({k}, __h)"
    return con.execute(sql).fetchnumpy()["_rowaddr"].tolist()


def _current_rows(con, cur_ds, cols: list[str], k: str, u: str, batch: int) -> pa.RecordBatchReader:
    """The current rows an upsert's new rows can match (same natural or upsert key), streamed by row
    address; all of them in one scan when that is most of the version."""
    matched = " UNION ".join(f"SELECT _rowaddr FROM cur_k SEMI JOIN src USING ({on})" for on in dict.fromkeys([k, u]))
    addrs = con.execute(f"{matched} ORDER BY 1").fetchnumpy()["_rowaddr"]
    if len(addrs) > TAKE_BELOW * cur_ds.count_rows():
        return cur_ds.scanner(columns=cols, with_row_address=True, batch_size=batch).to_reader()
    schema = pa.schema([cur_ds.schema.field(c) for c in cols] + [pa.field("_rowaddr", pa.uint64())])

    def taken():
        for start in range(0, len(addrs), batch):
            t = cur_ds._take_rows(addrs[start:start + batch].tolist(), columns=cols + ["_rowaddr"])
            yield from t.cast(schema).to_batches()

    return pa.RecordBatchReader.from_batches(schema, taken())


def _unique(con, name: str, keys: list[str], relation: str) -> None:
    """Dataset-wide: the natural key is unique over the new rows."""
    k = ", ".join(quote_ident(c) for c in keys)
    n, distinct = con.execute(f"SELECT count(*), count(DISTINCT ({k})) FROM {relation}").fetchall()[0]
    if n != distinct:
        raise ValidationFailed(ValidationReport(name, False, n, [{
            "expectation": "unique_natural_key", "column": keys, "unexpected_count": n - distinct,
            "unexpected_sample": [], "detail": f"{n - distinct} rows repeat a key {keys}"}]))


def _stage_added(con, name: str, schema: pa.Schema, uri: str, root: DataRoot, changes: versions.Changes,
                 extra: list[dict] | None, fresh: bool = False) -> list[ValidationReport]:
    """Validate the rows to append shard by shard and stage each shard as a fragment."""
    reports, pending, n = [], [], 0
    per_shard = versions.shard_rows(schema)
    reader = _in_key_order(con, name, schema, changes.rows_added, per_shard)

    def flush():
        nonlocal pending, n
        if not pending:
            return
        shard = pa.Table.from_batches(pending).cast(schema)
        report = validate(name, shard, extra)
        reports.append(report)
        if report.success:
            changes.new += versions.stage_fragments(uri, shard, schema, root.storage_options, fresh)
        pending, n = [], 0

    for batch in reader:
        pending.append(batch)
        n += batch.num_rows
        if n >= per_shard:
            flush()
    flush()
    return reports or [validate(name, schema.empty_table(), extra)]


def _in_key_order(con, name: str, schema: pa.Schema, rows: int, per_shard: int):
    """The rows to append, in key order, so that the shards (and what streams from them, an index's
    positions) do not depend on which worker finished first. Up to a shard: one sort. More: hash
    buckets of about a shard each, written once and each sorted on its own, so the sort never
    holds more than a bucket (DuckDB cannot always spill one sort of wide rows)."""
    import glob
    import shutil
    import tempfile

    order = ", ".join(quote_ident(c) for c in keys_for(name))
    batch = min(65_536, per_shard)
    if rows <= per_shard:
        yield from con.sql(f"SELECT * FROM added ORDER BY {order}").to_arrow_reader(batch)
        return
    buckets = -(-rows // per_shard)
    folder = tempfile.mkdtemp(prefix="buckets-", dir=versions.scratch_dir())
    cols = ", ".join(_column(f) for f in schema)
    try:
        con.execute(f"COPY (SELECT *, hash({order}) % {buckets} AS __bucket FROM added) TO {quote_literal(folder)} "
                    "(FORMAT parquet, PARTITION_BY (__bucket), OVERWRITE_OR_IGNORE)")
        for b in range(buckets):
            files = sorted(glob.glob(os.path.join(folder, f"__bucket={b}", "*.parquet")))
            if files:
                listed = ", ".join(quote_literal(f) for f in files)
                yield from con.sql(f"SELECT {cols} FROM read_parquet([{listed}], hive_partitioning = false) "
                                   f"ORDER BY {order}").to_arrow_reader(batch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kept(cur_ds, changes: versions.Changes):
    """The current rows that stay in the next version, in shards (for re-validation)."""
    import pyarrow.compute as pc

    removed = set(changes.removed)
    gone = pa.array(changes.deleted_addrs, pa.uint64())
    for frag in cur_ds.get_fragments():
        if frag.fragment_id in removed:
            continue
        for batch in frag.to_batches(batch_size=versions.shard_rows(cur_ds.schema), with_row_address=True):
            keep = pc.invert(pc.is_in(batch["_rowaddr"], value_set=gone))
            yield batch.filter(keep).drop_columns(["_rowaddr"])


def _merge_reports(name: str, reports: list[ValidationReport]) -> ValidationReport:
    failures: dict[tuple, dict] = {}
    for r in reports:
        for f in r.failures:
            key = (f["expectation"], str(f.get("column")))
            if key in failures:
                failures[key]["unexpected_count"] += f["unexpected_count"]
            else:
                failures[key] = dict(f)
    rows = sum(r.rows for r in reports)
    evaluated = max((r.evaluated for r in reports), default=0)
    return ValidationReport(name, not failures, rows, list(failures.values()), evaluated=evaluated)


def _open_current(root: DataRoot, current: DatasetVersion):
    """The current version to diff against; a version whose data is gone is replaced whole."""
    if current.table_version is None:
        raise OldCatalog(current)
    try:
        ds = open_version(root, current)
        missing = versions.missing_files(ds, root.absolute(current.path), root.fs)
    except (OSError, ValueError, RuntimeError) as e:
        log.warning("%s: its data cannot be read (%s); publishing the new version whole", current.ref, e)
        return None
    if missing:
        log.warning("%s: %d of its data files are missing (e.g. %s); publishing the new version whole",
                    current.ref, len(missing), missing[0])
        return None
    return ds


def intact(root: DataRoot, ref: DatasetVersion) -> bool:
    """Whether a version's data is all there, so an incremental stage may build on it."""
    return ref.table_version is not None and _open_current(root, ref) is not None


def _upload(root: DataRoot, name: str, attachments: dict[str, str]) -> str | None:
    """Files that belong to the version, under DATA_ROOT/_attachments/<name>/<id>/ (relative path)."""
    if not attachments:
        return None
    base = root.path("_attachments", name.replace("/", "__"), uuid.uuid4().hex)
    for filename, src in attachments.items():
        if root.relative(src) != src:  # staged under the root by a Ray task: moved, not copied
            root.move(src, posixpath.join(base, filename))
        else:
            root.upload(src, posixpath.join(base, filename))
    return root.relative(base)


def read(catalog: Catalog, root: DataRoot, name: str, version: int | None = None, columns: list[str] | None = None
         ) -> pa.Table:
    """The rows of a dataset version (current by default)."""
    ds = catalog.current(name) if version is None else catalog.version(name, version)
    if ds is None:
        raise KeyError(f"dataset '{name}' has no {'current version' if version is None else f'version {version}'}")
    return read_version(root, ds, columns)


def open_version(root: DataRoot, ref: DatasetVersion):
    """The Lance dataset of a catalog version, at that version."""
    if ref.table_version is None:
        raise OldCatalog(ref)
    try:
        return versions.open_dataset(root.absolute(ref.path), ref.table_version, root.storage_options)
    except (ValueError, OSError, RuntimeError) as e:
        raise FileNotFoundError(f"dataset {ref.ref} is missing its data at {ref.path} ({e}); run the stage "
                                "that writes it again (a build rebuilds it)") from e


def read_version(root: DataRoot, ref: DatasetVersion, columns: list[str] | None = None) -> pa.Table:
    return open_version(root, ref).to_table(columns=columns)


class OldCatalog(RuntimeError):
    """A catalog made before sharded versions: refused, with how to rebuild."""

    def __init__(self, ref: DatasetVersion, count: int = 1, catalog: str | None = None):
        where = f"catalog {catalog}: " if catalog else ""
        others = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(
            f"{where}dataset {ref.ref}{others} was written by an earlier corpusforge (one Parquet file per "
            "version, before sharded versions); this version cannot read it. Rebuild: move the workdir aside "
            "(or set a new `workdir`/`catalog` in the config) and run `corpusforge build --config FILE`.")
