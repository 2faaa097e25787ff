"""Work cache: model outputs keyed by (input content sha256 x stage work fingerprint).

The runner looks keys up here and sends only the missing ones to the model, so a refresh of
unchanged inputs makes no model calls and a killed run resumes from the shards it finished.
Each (stage, work fingerprint) has its own folder of Parquet shards under `DATA_ROOT/_cache`;
a shard is written to a staging name and moved into place, so a half-written shard is never
read. Errors are never cached: the next run retries them.
"""
from __future__ import annotations

import logging
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.runtime.stage import KEY
from tasks.runtime.storage import DataRoot
from tasks.runtime.tables import first_per_key

log = logging.getLogger(__name__)

COMPACT_AFTER = 64  # shards; compaction rewrites them as one


class WorkCache:
    def __init__(self, root: DataRoot, stage: str, fingerprint: str):
        self.root = root
        self.dir = root.path("_cache", stage, fingerprint)

    def _shards(self) -> list[str]:
        return [p for p in self.root.list_files(self.dir) if "/_tmp-" not in p]

    def load(self, columns: list[str] | None = None) -> pa.Table | None:
        shards = self._shards()
        if not shards:
            return None
        parts = []
        for p in shards:
            try:
                parts.append(pq.read_table(p, filesystem=self.root.fs, columns=columns))
            except (OSError, pa.ArrowInvalid) as e:  # a damaged shard is work to redo, not a failed run
                log.warning("ignoring unreadable cache shard %s (%s)", p, e)
        if not parts:
            return None
        table = pa.concat_tables(parts, promote_options="default")
        if len(shards) > COMPACT_AFTER and columns is None:
            self._compact(table, shards)
        return table

    def known(self, keys: pa.Array) -> set[str]:
        """The keys that already have a result."""
        cached = self.load([KEY])
        if cached is None:
            return set()
        return set(cached.filter(pc.is_in(cached[KEY], value_set=keys))[KEY].to_pylist())

    def lookup_table(self, keys: pa.Array, columns: list[str]) -> pa.Table | None:
        """One row per cached key among `keys` (KEY + columns)."""
        cached = self.load()
        if cached is None:
            return None
        hit = cached.filter(pc.is_in(cached[KEY], value_set=keys))
        return first_per_key(hit, KEY).select([KEY] + columns)

    def lookup(self, keys) -> tuple[pa.Table | None, set[str]]:
        """Cached rows for these keys, and the keys still missing."""
        wanted = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(list(keys), pa.string())
        cached = self.load()
        if cached is None:
            return None, set(wanted.to_pylist())
        hit = first_per_key(cached.filter(pc.is_in(cached[KEY], value_set=wanted)), KEY)
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
        self.append(first_per_key(table, KEY))
        for s in shards:
            self.root.fs.delete_file(s)
        log.info("compacted %d cache shards in %s", len(shards), self.dir)
