"""Work cache: model outputs keyed by (input content sha256 x stage fingerprint).

A stage looks up its keys here and runs its model only on the missing ones, so a refresh of
unchanged inputs makes no model calls and a killed run resumes from the shards it finished.
Each stage fingerprint has its own folder of Parquet shards under `DATA_ROOT/_cache`; a shard
is written to a staging name and moved into place, so a half-written shard is never read.
"""
from __future__ import annotations

import logging
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.runtime.storage import DataRoot

log = logging.getLogger(__name__)

KEY = "cache_key"
COMPACT_AFTER = 64  # shards; compaction rewrites them as one


class WorkCache:
    def __init__(self, root: DataRoot, stage: str, fingerprint: str):
        self.root = root
        self.dir = root.path("_cache", stage, fingerprint)

    def _shards(self) -> list[str]:
        return [p for p in self.root.list_files(self.dir) if "/_tmp-" not in p]

    def load(self) -> pa.Table | None:
        shards = self._shards()
        if not shards:
            return None
        table = pa.concat_tables([pq.read_table(p, filesystem=self.root.fs) for p in shards],
                                 promote_options="default")
        if len(shards) > COMPACT_AFTER:
            self._compact(table, shards)
        return table

    def lookup(self, keys: pa.Array | list[str]) -> tuple[pa.Table | None, set[str]]:
        """Cached rows for these keys, and the keys still missing."""
        wanted = pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys
        cached = self.load()
        if cached is None:
            return None, set(wanted.to_pylist())
        hit = cached.filter(pc.is_in(cached[KEY], value_set=wanted))
        hit = _unique(hit)
        return hit, set(wanted.to_pylist()) - set(hit[KEY].to_pylist())

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if KEY not in table.column_names:
            raise ValueError(f"cache shards need a '{KEY}' column")
        tmp = self.root.path(self.dir, f"_tmp-{uuid.uuid4().hex}.parquet")
        self.root.write(table, tmp)
        self.root.move(tmp, self.root.path(self.dir, f"shard-{uuid.uuid4().hex}.parquet"))

    def _compact(self, table: pa.Table, shards: list[str]) -> None:
        self.append(_unique(table))
        for s in shards:
            self.root.fs.delete_file(s)
        log.info("compacted %d cache shards in %s", len(shards), self.dir)


def _unique(table: pa.Table) -> pa.Table:
    """First row per key (shards from a retried batch may repeat keys)."""
    if table.num_rows == 0:
        return table
    idx = pa.table({KEY: table[KEY], "_i": pa.array(range(table.num_rows))}).group_by(KEY).aggregate([("_i", "min")])
    return table.take(pa.array(sorted(idx["_i_min"].to_pylist()), pa.int64()))
