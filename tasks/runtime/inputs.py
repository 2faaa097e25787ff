"""What a stage sees while it runs: its declared input datasets, its own previous outputs, and the
services every stage shares (text vectors through the embed stage's cache).

Inputs are read lazily and at most once per stage run. `Inputs.of(config, tables)` builds the
same object over in-memory tables, so a stage's pure steps run in a unit test without a catalog.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from tasks.runtime.catalog import DatasetVersion

if TYPE_CHECKING:
    from schemas.config import BuildConfig
    from tasks.runtime.lifecycle import Run


DETACH_BYTES = 16 << 20  # in-memory inputs up to this size travel with a detached copy


@dataclass
class Counters:
    """Model work done through shared services during one stage run (added to its stage_runs row)."""

    model_calls: int = 0
    cache_hits: int = 0


class Inputs:
    def __init__(self, config: "BuildConfig", refs: dict[str, DatasetVersion] | None = None,
                 run: "Run | None" = None, tables: dict[str, pa.Table] | None = None,
                 previous: dict[str, DatasetVersion] | None = None, params: dict | None = None,
                 cache_root=None, root=None):
        self.config = config
        self.run = run
        self.root = root if root is not None else (run.root if run is not None else None)
        self.cache_root = cache_root if cache_root is not None else self.root
        self._metas: dict[tuple[str, int], dict] = {}
        self.refs: dict[str, DatasetVersion] = dict(refs or {})
        self._tables: dict[str, pa.Table] = dict(tables or {})
        self._previous = dict(previous or {})
        self.params = dict(params or {})
        self.counters = Counters()
        self.workspace: Path | None = None  # a private folder for stages that write files (exports)

    @classmethod
    def of(cls, config: "BuildConfig", tables: dict[str, pa.Table], cache_root=None, **params) -> "Inputs":
        """Inputs over in-memory tables (unit tests, notebooks); `cache_root` (a DataRoot) holds the
        work caches of shared services, none by default."""
        return cls(config, tables={k: v for k, v in tables.items() if v is not None}, params=params,
                   cache_root=cache_root)

    # -- datasets ---------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._tables or name in self.refs

    def __getitem__(self, name: str) -> pa.Table:
        table = self.get(name)
        if table is None:
            raise KeyError(f"input dataset '{name}' is not available to this stage")
        return table

    @property
    def stored(self) -> bool:
        """True when the inputs are dataset versions under a data root (not in-memory tables)."""
        return self.root is not None and bool(self.refs or self._previous)

    def get(self, name: str) -> pa.Table | None:
        if name not in self._tables:
            ref = self.refs.get(name)
            if ref is None or self.root is None:
                return None
            self._tables[name] = self.dataset(name).to_table()
        return self._tables[name]

    def ref(self, name: str) -> DatasetVersion | None:
        return self.refs.get(name)

    def dataset(self, name: str):
        """The Lance dataset of an input's version: scan it in batches, or hand it to DuckDB / Ray."""
        from tasks.runtime.publish import open_version

        return open_version(self.root, self.refs[name])

    def batches(self, name: str, columns: list[str] | None = None, filter: str | None = None,
                batch_size: int = 65_536):
        """An input's rows in batches, never the whole table in memory (in-memory inputs: sliced)."""
        if name in self._tables or self.root is None or name not in self.refs:
            table = self.get(name)
            if table is None:
                return
            if columns:
                table = table.select(columns)
            yield from table.to_batches(max_chunksize=batch_size)
            return
        yield from self.dataset(name).scanner(columns=columns, filter=filter, batch_size=batch_size).to_batches()

    def columns(self, name: str, columns: list[str]) -> pa.Table | None:
        """Some columns of an input, read in batches and not kept (a narrow view of a large table)."""
        if name not in self:
            return None
        schema = self.schema(name)
        have = [c for c in columns if c in schema.names]
        parts = list(self.batches(name, have))
        return pa.Table.from_batches(parts) if parts else schema.empty_table().select(have)

    def schema(self, name: str) -> pa.Schema:
        if name in self._tables or self.root is None or name not in self.refs:
            return self[name].schema
        return self.dataset(name).schema

    def matching(self, prefix: str) -> list[str]:
        """Names of the inputs under a glob read's prefix (`judgments/` for `judgments/*`)."""
        return sorted(n for n in set(self.refs) | set(self._tables) if n.startswith(prefix))

    def concat(self, prefix: str) -> pa.Table | None:
        """Every input under a prefix as one table (e.g. all judgment label sets)."""
        tables = [self.get(n) for n in self.matching(prefix)]
        tables = [t for t in tables if t is not None]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")

    # -- the stage's own previous outputs (incremental stages) ----------------------------------
    def previous_ref(self, name: str) -> DatasetVersion | None:
        return self._previous.get(name)

    def previous(self, name: str) -> pa.Table | None:
        key = f"previous:{name}"
        if key not in self._tables:
            ref = self._previous.get(name)
            if ref is None or self.root is None:
                return self._tables.get(key)
            self._tables[key] = self.previous_dataset(name).to_table()
        return self._tables[key]

    def previous_dataset(self, name: str):
        """The Lance dataset of the stage's own previous output (to diff against, streaming)."""
        from tasks.runtime.publish import open_version

        return open_version(self.root, self._previous[name])

    def attachment(self, ref: DatasetVersion, filename: str) -> str | None:
        """A local path to a file stored with a dataset version (downloaded when the root is remote)."""
        from tasks.runtime.storage import local_copy

        base = self.meta(ref).get("_attachments")
        if not base or self.root is None:
            return None
        return local_copy(self.root, self.root.path(base, filename))

    def meta(self, ref: DatasetVersion | None) -> dict:
        """What the catalog stores with a version (an index manifest, a stage's state)."""
        if ref is None:
            return {}
        key = (ref.name, ref.version)
        if key not in self._metas:
            self._metas[key] = self.run.catalog.meta(ref.name, ref.version) if self.run is not None else {}
        return self._metas[key]

    def detached(self) -> "Inputs":
        """A copy that needs no catalog (for a Ray task): the same refs over the data root, with
        every version's catalog meta fetched now, and only the small in-memory tables."""
        for ref in list(self.refs.values()) + list(self._previous.values()):
            self.meta(ref)
        other = Inputs(self.config, self.refs, None, previous=self._previous, params=self.params,
                       root=self.root, cache_root=self.cache_root)
        other._metas = dict(self._metas)
        other._tables = {k: v for k, v in self._tables.items() if v.nbytes < DETACH_BYTES}
        return other

    # -- environment ------------------------------------------------------------------------
    @property
    def corpus_root(self) -> Path:
        return self.config.corpus_root

