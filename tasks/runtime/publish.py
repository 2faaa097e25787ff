"""Atomic, validated publish of a dataset version (called only by the write path, tasks.runtime.write).

1. cast to the table's contract and write Parquet (and the version's attachments) to staging;
2. validate with the table's expectation suite (a failure blocks everything after);
3. move the folder to its version path;
4. in one catalog transaction: insert the version, flip the current flag, add lineage.

A crash before step 4 leaves at most an unreferenced folder, never a visible partial version,
and the previous version stays current. A table whose content hash equals the current
version's is not published again: no-change refreshes create no versions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow as pa

from schemas.tables import keys_for, schema_fingerprint, schema_for
from tasks.runtime.catalog import Catalog, DatasetVersion, json_dumps, now
from tasks.runtime.sql import quote_ident, quote_literal, view_name
from tasks.runtime.stage import Output
from tasks.runtime.storage import DataRoot
from tasks.runtime.validation import ValidationFailed, validate

log = logging.getLogger(__name__)

DATA_FILE = "data.parquet"


@dataclass
class PublishResult:
    dataset: DatasetVersion
    published: bool  # False when the content equals the current version
    validation: dict


def content_hash(name: str, table: pa.Table, identity: dict | None = None) -> str:
    """Order-independent content hash: the IPC bytes of the table sorted by its natural key
    (plus what else identifies the version, e.g. an index's type and parameters)."""
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


def publish(catalog: Catalog, root: DataRoot, name: str, output: Output | pa.Table, *,
            parents: list[DatasetVersion] = (), run_id: str | None = None, stage: str | None = None,
            fingerprint: str | None = None, extra_expectations: list[dict] | None = None) -> PublishResult:
    out = output if isinstance(output, Output) else Output(output)
    table = conform(name, out.table)
    chash = content_hash(name, table, out.identity)
    current = catalog.current(name)
    if current is not None and current.content_hash == chash:
        log.info("%s unchanged (%d rows); keeping %s", name, table.num_rows, current.ref)
        return PublishResult(current, False, {"success": True, "skipped": "unchanged"})

    safe = name.replace("/", "__")
    staging = root.path("_staging", f"{safe}-{uuid.uuid4().hex}")
    root.write(table, posixpath.join(staging, DATA_FILE))
    for filename, local in out.attachments.items():
        root.upload(local, posixpath.join(staging, filename))
    report = validate(name, table, extra_expectations)
    if not report.success:
        root.delete_dir(staging)
        raise ValidationFailed(report)

    final = root.path(safe, f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}")
    root.move(staging, final)

    with catalog.connect() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            version = catalog.next_version(con, name)
            con.execute("UPDATE datasets SET is_current = false WHERE name = ? AND is_current", [name])
            con.execute(
                "INSERT INTO datasets (name, version, path, row_count, content_hash, schema_fingerprint, "
                "validation, is_current, run_id, stage, fingerprint, created_at, meta) "
                "VALUES (?,?,?,?,?,?,?,true,?,?,?,?,?)",
                [name, version, final, table.num_rows, chash, schema_fingerprint(table.schema),
                 json_dumps(report.to_json()), run_id, stage, fingerprint, now(),
                 json.dumps(out.meta, sort_keys=True, default=str) if out.meta is not None else None],
            )
            for p in parents:
                con.execute("INSERT INTO lineage VALUES (?,?,?,?)", [name, version, p.name, p.version])
            if root.is_local:
                con.execute(view_sql(name, data_path(final), table.schema))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    ds = DatasetVersion(name, version, final, table.num_rows, chash)
    log.info("published %s (%d rows)", ds.ref, table.num_rows)
    return PublishResult(ds, True, report.to_json())


def data_path(version_path: str) -> str:
    """The Parquet file of a version (versions made before attachments were one file)."""
    return version_path if version_path.endswith(".parquet") else posixpath.join(version_path, DATA_FILE)


def view_sql(name: str, path: str, schema: pa.Schema) -> str:
    """A view over the current Parquet file, with fixed-size vectors restored (FLOAT[] -> FLOAT[d])."""
    select = "*"
    fixed = [f for f in schema if pa.types.is_fixed_size_list(f.type)]
    if fixed:
        casts = ", ".join(f"{quote_ident(f.name)}::FLOAT[{f.type.list_size}] AS {quote_ident(f.name)}" for f in fixed)
        select = f"* REPLACE ({casts})"
    return f"CREATE OR REPLACE VIEW {quote_ident(view_name(name))} AS SELECT {select} FROM read_parquet({quote_literal(path)})"


def read(catalog: Catalog, root: DataRoot, name: str, version: int | None = None) -> pa.Table:
    """The rows of a dataset version (current by default), cast back to its contract."""
    ds = catalog.current(name) if version is None else catalog.version(name, version)
    if ds is None:
        raise KeyError(f"dataset '{name}' has no {'current version' if version is None else f'version {version}'}")
    return read_version(root, ds)


def read_version(root: DataRoot, ds: DatasetVersion) -> pa.Table:
    table = root.read(data_path(ds.path))
    return table.cast(schema_for(ds.name, table)) if ds.name.split("/")[0] != "embeddings" else _fix_vectors(table)


def _fix_vectors(table: pa.Table) -> pa.Table:
    """Parquet can hand FLOAT[d] back as FLOAT[]; restore the fixed size."""
    vec = table.schema.field("vector").type
    if pa.types.is_fixed_size_list(vec) or table.num_rows == 0:
        return table
    dim = len(table.column("vector")[0])
    return table.cast(schema_for("embeddings", table.set_column(
        table.schema.get_field_index("vector"), "vector",
        table.column("vector").cast(pa.list_(pa.float32(), dim)))))
