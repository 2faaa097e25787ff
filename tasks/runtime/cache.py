"""Work cache: model outputs keyed by (input content sha256 x stage work fingerprint).

The runner looks keys up here and sends only the missing ones to the model, so a refresh of
unchanged inputs makes no model calls and a killed run resumes from the shards it finished.
Each (stage, work fingerprint) has its own folder of Parquet shards under `DATA_ROOT/_cache`;
workers write shards there directly, to a staging name that is renamed when complete, so a
half-written shard is never read. Lookups stream over the shards with a key filter, so a large
cache is never held in memory. Errors are never cached: the next run retries them.
"""
from __future__ import annotations

import logging
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from tasks.runtime.stage import KEY
from tasks.runtime.storage import DataRoot
from tasks.runtime.tables import first_per_key

log = logging.getLogger(__name__)


class WorkCache:
    def __init__(self, root: DataRoot, stage: str, fingerprint: str):
        self.root = root
        self.dir = root.path("_cache", stage, fingerprint)

    def _shards(self) -> list[str]:
        return [p for p in self.root.list_files(self.dir) if "/_tmp-" not in p]

    def _scan(self, keys, columns: list[str] | None) -> pa.Table | None:
        shards = self._shards()
        if not shards:
            return None
        wanted = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(list(keys), pa.string())
        try:
            return self._read(shards, wanted, columns)
        except (OSError, pa.ArrowInvalid) as e:  # a damaged shard is work to redo, not a failed run
            log.warning("cache %s unreadable as a whole (%s); reading shard by shard", self.dir, e)
            parts = []
            for p in shards:
                try:
                    t = pads.dataset(p, filesystem=self.root.fs, format="parquet")
                    parts.append(t.to_table(columns=columns, filter=pc.field(KEY).isin(wanted)))
                except (OSError, pa.ArrowInvalid) as err:
                    log.warning("ignoring unreadable cache shard %s (%s)", p, err)
            return pa.concat_tables(parts, promote_options="default") if parts else None

    def _read(self, shards: list[str], wanted: pa.Array, columns: list[str] | None) -> pa.Table:
        """The rows of `wanted` keys: the key column of every shard first, then the other columns
        from the shards that hold a hit only (a few queries' vectors are not a scan of a corpus')."""
        filt = pc.field(KEY).isin(wanted)
        ds = pads.dataset(shards, filesystem=self.root.fs, format="parquet")
        if columns == [KEY]:
            return ds.to_table(columns=columns, filter=filt)
        holding = sorted({b.fragment.path for b in ds.scanner(columns=[KEY], filter=filt).scan_batches()
                          if b.record_batch.num_rows})
        if not holding:
            return ds.schema.empty_table().select(columns) if columns else ds.schema.empty_table()
        return pads.dataset(holding, filesystem=self.root.fs, format="parquet").to_table(columns=columns, filter=filt)

    def known(self, keys) -> set[str]:
        """The keys among `keys` that already have a result."""
        hit = self._scan(keys, [KEY])
        return set() if hit is None else set(hit[KEY].to_pylist())

    def lookup_table(self, keys, columns: list[str]) -> pa.Table | None:
        """One row per cached key among `keys` (KEY + columns)."""
        hit = self._scan(keys, [KEY] + columns)
        return None if hit is None else first_per_key(hit, KEY)

    def lookup(self, keys) -> tuple[pa.Table | None, set[str]]:
        """Cached rows for these keys, and the keys still missing."""
        wanted = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(list(keys), pa.string())
        hit = self._scan(wanted, None)
        if hit is None:
            return None, set(wanted.to_pylist())
        hit = first_per_key(hit, KEY)
        return hit, set(wanted.to_pylist()) - set(hit[KEY].to_pylist())

    def load(self) -> pa.Table | None:
        """Every cached row (tests and small caches only)."""
        shards = self._shards()
        if not shards:
            return None
        return pads.dataset(shards, filesystem=self.root.fs, format="parquet").to_table()

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if KEY not in table.column_names:
            raise ValueError(f"cache shards need a '{KEY}' column")
        tmp = self.root.path(self.dir, f"_tmp-{uuid.uuid4().hex}.parquet")
        self.root.write(table, tmp)
        self.root.move(tmp, self.root.path(self.dir, f"shard-{uuid.uuid4().hex}.parquet"))
