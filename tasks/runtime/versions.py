"""Dataset versions as Lance datasets: sharded, shared between versions, committed atomically.

Each dataset name is one Lance dataset under the data root (`DATA_ROOT/<name>.lance`); a catalog
version points at one Lance version. A version is a set of fragments (the shards, each of
`shard_rows(schema)` rows at most, about `SHARD_BYTES`): a refresh stages new fragments for the
rows that changed, records deleted rows in deletion files (the fragments themselves are not rewritten), and commits both in one
Lance transaction. Unchanged fragments are shared by every version that has them. The catalog
row is written after the Lance commit, so a crash in between leaves the previous version
current; the next publish first restores the Lance dataset to the catalog's version.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import pyarrow as pa

log = logging.getLogger(__name__)

SHARD_ROWS = 100_000  # rows per fragment at most
SHARD_BYTES = 64 * 2**20  # and about this many bytes: what one shard costs the process that writes it
ROW_GROUP = 1024


def shard_rows(schema: pa.Schema) -> int:
    """Rows per shard for a contract: SHARD_ROWS, fewer for wide rows (a 384-d vector is 1.5 KB), so
    that staging, validating and reading a shard take the same memory whatever the dataset."""
    return max(ROW_GROUP, min(SHARD_ROWS, SHARD_BYTES // max(1, sum(_field_bytes(f.type) for f in schema))))


def _field_bytes(t: pa.DataType) -> int:
    if pa.types.is_fixed_size_list(t):
        return t.list_size * _field_bytes(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return 8 * _field_bytes(t.value_type)
    if pa.types.is_struct(t):
        return sum(_field_bytes(f.type) for f in t)
    try:
        return max(1, t.bit_width // 8)
    except ValueError:  # strings and binaries: a typical text
        return 256


@dataclass
class Changes:
    """What a publish commits: staged fragments to add, fragments with new deletion files, removed ones."""

    new: list = field(default_factory=list)  # FragmentMetadata
    updated: list = field(default_factory=list)  # FragmentMetadata with a deletion file
    removed: list[int] = field(default_factory=list)  # fragment ids deleted whole
    rows_added: int = 0
    rows_deleted: int = 0
    deleted_addrs: list[int] = field(default_factory=list)  # row addresses of the deleted rows

    @property
    def empty(self) -> bool:
        return not (self.new or self.updated or self.removed)


def lance():
    import warnings

    # fork + exec (Ray starting its processes) is safe; the warning is about forked Lance calls
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    import lance as _lance  # lazy: a heavy import that commands without data never need

    return _lance


def open_dataset(uri: str, version: int | None = None, storage_options: dict | None = None):
    return lance().dataset(uri, version=version, storage_options=storage_options or None)


def exists(uri: str, storage_options: dict | None = None) -> bool:
    try:
        open_dataset(uri, storage_options=storage_options)
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def stage_fragments(uri: str, data, schema: pa.Schema, storage_options: dict | None = None,
                    fresh: bool = False) -> list:
    """Write rows as uncommitted fragments of a dataset (it may not exist yet); `fresh`: for a
    version that replaces everything (a new contract may differ from the current one)."""
    from lance.fragment import write_fragments

    if isinstance(data, pa.Table) and data.num_rows == 0:
        return []
    return write_fragments(data, uri, schema=schema, mode="overwrite" if fresh else "append",
                           max_rows_per_file=shard_rows(schema), max_rows_per_group=ROW_GROUP,
                           storage_options=storage_options or None)


def delete_rows(ds, rowaddrs: Iterable[int]) -> tuple[list, list[int], int]:
    """Deletion files for the given row addresses, per fragment (uncommitted): (updated fragments,
    ids of fragments left empty, rows deleted)."""
    by_fragment: dict[int, list[int]] = {}
    for addr in rowaddrs:
        by_fragment.setdefault(int(addr) >> 32, []).append(int(addr))
    updated, removed, n = [], [], 0
    for fid, addrs in sorted(by_fragment.items()):
        frag = ds.get_fragment(fid)
        n += len(addrs)
        if len(addrs) >= frag.count_rows():
            removed.append(fid)
            continue
        meta = frag.delete("_rowid IN (" + ",".join(map(str, addrs)) + ")")
        if meta is not None:
            updated.append(meta)
    return updated, removed, n


def commit(uri: str, changes: Changes, schema: pa.Schema, read_version: int | None,
           storage_options: dict | None = None, overwrite: bool = False) -> int:
    """Commit staged changes on top of `read_version`; with `overwrite` (a new dataset, or one
    whose contract changed) the staged fragments replace everything. Returns the new version."""
    L = lance()
    if overwrite or read_version is None:
        latest = open_dataset(uri, storage_options=storage_options).latest_version if exists(uri, storage_options) \
            else None
        op = L.LanceOperation.Overwrite(schema, changes.new)
        return L.LanceDataset.commit(uri, op, read_version=latest, storage_options=storage_options or None).version
    ds = open_dataset(uri, storage_options=storage_options)
    if ds.latest_version != read_version:
        # a crash after an earlier Lance commit left a version the catalog never recorded
        log.warning("%s: Lance is at v%d but the catalog at v%d; restoring the catalog's version",
                    uri, ds.latest_version, read_version)
        restored = ds.checkout_version(read_version)
        restored.restore()
        read_version = open_dataset(uri, storage_options=storage_options).version
    op = L.LanceOperation.Update(removed_fragment_ids=changes.removed, updated_fragments=changes.updated,
                                 new_fragments=changes.new)
    return L.LanceDataset.commit(uri, op, read_version=read_version,
                                 storage_options=storage_options or None).version


def version_hash(ds) -> str:
    """The content hash of a version, from its shards: data files and deletion files."""
    parts = []
    for f in sorted(ds.get_fragments(), key=lambda f: f.fragment_id):
        m = f.metadata
        files = [d.path for d in f.data_files()]
        dele = m.deletion_file
        parts.append([files, None if dele is None else [dele.id, dele.num_deleted_rows]])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def shard_files(ds) -> list[str]:
    return sorted(d.path for f in ds.get_fragments() for d in f.data_files())


def missing_files(ds, uri: str, fs) -> list[str]:
    """Data files of the version that are gone from the store (deleted by hand, a failed sync): a
    version that lost one cannot be diffed against, and is republished whole."""
    import posixpath

    import pyarrow.fs as pafs

    base = uri.split("://", 1)[1] if "://" in uri else uri
    paths = [p if "://" in p or p.startswith("/") else posixpath.join(base, "data", p) for p in shard_files(ds)]
    infos = fs.get_file_info(paths) if paths else []
    return [p for p, i in zip(paths, infos) if i.type == pafs.FileType.NotFound]


def batches(ds, columns: list[str] | None = None, filter: str | None = None,
            batch_size: int = 65_536, with_rowaddr: bool = False) -> Iterator[pa.RecordBatch]:
    """The rows of a version, streamed in batches (never the whole table in memory)."""
    scanner = ds.scanner(columns=columns, filter=filter, batch_size=batch_size, with_row_address=with_rowaddr)
    yield from scanner.to_batches()


def scratch_db():
    """An in-memory DuckDB for diffs and checks over shards, bounded so that it spills to disk
    instead of growing with the corpus (CORPUSFORGE_DUCKDB_MEMORY, default 512MB)."""
    import tempfile

    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{_memory_limit()}'")
    con.execute(f"SET temp_directory = '{scratch_dir()}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def scratch_dir() -> str:
    """Where the scratch DuckDB spills, and where a publish writes its temporary buckets."""
    import os
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "corpusforge-duckdb")
    os.makedirs(path, exist_ok=True)
    return path


def _memory_limit() -> str:
    import os
    import re

    value = os.environ.get("CORPUSFORGE_DUCKDB_MEMORY", "512MB").strip()
    if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value, re.I):
        raise ValueError(f"CORPUSFORGE_DUCKDB_MEMORY={value!r}: give a size such as 512MB or 2GB")
    return value
