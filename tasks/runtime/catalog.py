"""The DuckDB catalog: runs, stage runs, dataset versions, lineage and quarantine.

Connections are short-lived so that readers (the CLI, notebooks) can open the file between
writes. A run that writes holds an exclusive file lock for its whole duration; a second run
waits for it up to a timeout and then fails with a message naming the holder.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)

DDL = (Path(__file__).resolve().parents[2] / "schemas" / "catalog.sql").read_text()
_REF = "name, version, path, row_count, content_hash, table_version"
_EXTRA_DDL: list[str] = []  # views and macros that other modules register (judgment analysis)


_COLLECTIONS: dict[str, tuple[str, str, str]] = {}  # dataset prefix -> (view, select list, SQL word prefix)


def register_collection(prefix: str, view: str, select: str, trigger: str) -> None:
    """A union view over every current dataset under a prefix, for SQL that mentions a word
    starting with `trigger` (e.g. every `judgment_*` macro reads the `judgments` union)."""
    _COLLECTIONS[prefix] = (view, select, trigger)


_ALIASES: dict[str, object] = {}  # view name -> pick(current dataset names) -> the dataset it shows, or None


def register_alias(view: str, pick) -> None:
    """A view under a fixed name that shows one current dataset chosen by `pick` (e.g. `tree_nodes`,
    the default tree), registered like the dataset views for SQL that names it."""
    _ALIASES[view] = pick


def register_views(catalog: "Catalog", con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Register the current version of every dataset the SQL names (by its view name, e.g.
    `embeddings_text`) on the connection, streaming from its shards; a registered collection
    (every label set for `judgments`) becomes one union view."""
    import re

    from tasks.runtime.sql import quote_ident, view_name

    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql)}
    current = catalog.current_all()
    wanted = {n for n in current if view_name(n).lower() in words}
    aliases = {view: pick(sorted(current)) for view, pick in _ALIASES.items() if view.lower() in words}
    aliases = {view: name for view, name in aliases.items() if name in current and view_name(name) != view}
    wanted |= set(aliases.values())
    for prefix, (view, select, trigger) in _COLLECTIONS.items():
        if any(w.startswith(trigger) for w in words):
            wanted |= {n for n in current if n.startswith(prefix)}
    if not wanted:
        return
    from tasks.runtime.publish import open_version

    root = catalog.data_root()
    for name in sorted(wanted):
        try:
            con.register(view_name(name), open_version(root, current[name]))
        except (FileNotFoundError, RuntimeError) as e:
            log.warning("view %s unavailable: %s", view_name(name), e)
    for view, name in aliases.items():
        con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(view)} AS SELECT * FROM {quote_ident(view_name(name))}")
    for prefix, (view, select, trigger) in _COLLECTIONS.items():
        members = [view_name(n) for n in sorted(wanted) if n.startswith(prefix)]
        if members:
            union = " UNION ALL ".join(f"SELECT {select} FROM {quote_ident(m)}" for m in members)
            con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(view)} AS {union}")


def register_ddl(sql: str) -> None:
    """Let an analysis module add views or macros that every catalog gets on open."""
    if sql not in _EXTRA_DDL:
        _EXTRA_DDL.append(sql)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class CatalogError(RuntimeError):
    """A catalog file that cannot be opened: missing, corrupt, or held by another process."""


class CatalogBusy(CatalogError):
    """Another run holds the catalog lock."""


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    path: str  # relative to the data root (the Lance table of the dataset)
    row_count: int
    content_hash: str
    table_version: int | None = None  # the Lance version; None in catalogs made before sharded versions

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


class Catalog:
    def __init__(self, path: str | Path, root=None, read_only: bool = False):
        """A writer's catalog creates the file and brings its DDL up to date; a read-only one
        (every command that only reads) never writes, so it works on a read-only mount and
        never takes the writer's lock."""
        self.path = str(path)
        self.root = root  # the DataRoot its paths are relative to (default: data/ beside the file)
        self.read_only = read_only
        if read_only:
            if not Path(self.path).is_file():
                raise CatalogError(f"no catalog file at {self.path}")
            with self.connect():
                pass
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            _migrate(con)
            con.execute(DDL)
            _backfill_reason_codes(con)
            for sql in _EXTRA_DDL:
                con.execute(sql)

    @contextlib.contextmanager
    def connect(self, read_only: bool | None = None, retries: int = 50) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open, yield, close. Retries briefly when another process has the file open, then names it."""
        from tasks.runtime.catalog_errors import open_error

        read_only = self.read_only if read_only is None else read_only
        delay = 0.05
        for attempt in range(retries):
            try:
                con = duckdb.connect(self.path, read_only=read_only)
                break
            except duckdb.Error as e:
                if "lock" not in str(e).lower() or attempt == retries - 1:
                    raise open_error(self.path, e, read_only) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
        try:
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: list | None = None, views: bool = True, read_only: bool | None = None) -> pa.Table:
        """Run SQL; the datasets it names are registered first as views of their current versions.
        `read_only` runs it on a connection that can change neither the catalog nor any file."""
        read_only = self.read_only if read_only is None else read_only
        with self.connect(read_only=read_only) as con:
            if read_only:
                from tasks.runtime.catalog_errors import lock_down

                lock_down(con)
            if views:
                register_views(self, con, sql)
            rel = con.sql(sql, params=params or None)
            return pa.table({}) if rel is None else rel.to_arrow_table()  # None: no statement returns rows

    def data_root(self):
        from tasks.runtime.storage import DataRoot

        if self.root is None:
            with self.connect() as con:
                row = con.execute("SELECT value FROM settings WHERE key = 'data_root'").fetchall()
            self.root = DataRoot(row[0][0] if row else str(Path(self.path).resolve().parent / "data"))
        return self.root

    def remember_data_root(self, uri: str) -> None:
        """Record a remote data root, so `corpusforge sql --catalog FILE` reads the same data."""
        if "://" not in uri or uri.startswith("file://"):
            return
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO settings VALUES ('data_root', ?)", [uri])

    # ---- run lock -------------------------------------------------------------------------
    @contextlib.contextmanager
    def run_lock(self, timeout_s: float, holder: str) -> Iterator[None]:
        lock_path = self.path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        other = Path(lock_path).read_text().strip() or "another run"
                        raise CatalogBusy(
                            f"catalog {self.path} is locked by {other}; waited {timeout_s:.0f}s. "
                            "Wait for that run to finish or raise flow.lock_timeout_s."
                        ) from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.write(fd, f"{holder} (pid {os.getpid()} on {socket.gethostname()})".encode())
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ---- runs -----------------------------------------------------------------------------
    def start_run(self, flow: str, config_name: str, config_fingerprint: str, config_json: str,
                  prefect_flow_run_id: str | None = None) -> str:
        run_id = f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        with self.connect() as con:
            con.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,NULL,'running',NULL,?,?,?)",
                [run_id, flow, config_name, config_fingerprint, config_json, now(),
                 _user(), socket.gethostname(), prefect_flow_run_id],
            )
        return run_id

    def mark_abandoned_runs(self) -> int:
        """Runs left `running` by a process that died: only the lock holder runs, so when the lock
        is taken, every run still marked running was abandoned."""
        with self.connect() as con:
            n = con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
            if n:
                con.execute("UPDATE runs SET status = 'abandoned', finished_at = ?, message = "
                            "'the process running it stopped before it finished (killed or crashed)' "
                            "WHERE status = 'running'", [now()])
        if n:
            log.warning("marked %d abandoned run(s) in %s", n, self.path)
        return n

    def finish_run(self, run_id: str, status: str, message: str | None = None) -> None:
        with self.connect() as con:
            con.execute("UPDATE runs SET finished_at=?, status=?, message=? WHERE run_id=?",
                        [now(), status, message, run_id])

    def record_stage(self, run_id: str, stage: str, *, fingerprint: str | None, started_at: datetime,
                     status: str, rows_in: int, rows_out: int, rows_quarantined: int,
                     rows_deduplicated: int, model_calls: int, cache_hits: int, seconds: float,
                     message: str | None = None, peak_memory_mb: float | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT INTO stage_runs (run_id, stage, fingerprint, started_at, finished_at, status, rows_in, "
                "rows_out, rows_quarantined, rows_deduplicated, model_calls, cache_hits, seconds, message, "
                "peak_memory_mb) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [run_id, stage, fingerprint, started_at, now(), status, rows_in, rows_out,
                 rows_quarantined, rows_deduplicated, model_calls, cache_hits, seconds, message, peak_memory_mb],
            )

    def add_quarantine(self, run_id: str | None, rows: pa.Table) -> None:
        """Rows of (stage, key, reason, payload[, code]); a missing code is derived from the reason."""
        if rows.num_rows == 0:
            return
        if "code" not in rows.column_names:
            from tasks.runtime.reasons import reason_code

            rows = rows.append_column("code", pa.array([reason_code(r) for r in rows["reason"].to_pylist()],
                                                       pa.string()))
        with self.connect() as con:
            con.register("q", rows)
            con.execute(
                "INSERT INTO quarantine (run_id, stage, key, reason, payload, created_at, code) "
                "SELECT ?, stage, key, reason, payload, ?, code FROM q", [run_id, now()]
            )

    # ---- datasets -------------------------------------------------------------------------
    def current(self, name: str) -> DatasetVersion | None:
        with self.connect() as con:
            row = con.execute(
                f"SELECT {_REF} FROM datasets "
                "WHERE name=? AND is_current", [name]).fetchone()
        return DatasetVersion(*row) if row else None

    def current_all(self) -> dict[str, DatasetVersion]:
        """Every current dataset version, by name."""
        with self.connect() as con:
            rows = con.execute(f"SELECT {_REF} FROM datasets "
                               "WHERE is_current").fetchall()
        return {r[0]: DatasetVersion(*r) for r in rows}

    def meta(self, name: str, version: int) -> dict:
        with self.connect() as con:
            row = con.execute("SELECT meta FROM datasets WHERE name = ? AND version = ?", [name, version]).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def version(self, name: str, version: int) -> DatasetVersion | None:
        with self.connect() as con:
            row = con.execute(
                f"SELECT {_REF} FROM datasets "
                "WHERE name=? AND version=?", [name, version]).fetchone()
        return DatasetVersion(*row) if row else None

    def next_version(self, con: duckdb.DuckDBPyConnection, name: str) -> int:
        return con.execute("SELECT coalesce(max(version), 0) + 1 FROM datasets WHERE name=?",
                           [name]).fetchone()[0]

    def lineage(self, name: str, version: int | None = None) -> pa.Table:
        """All ancestors of a dataset version, each edge once (at its nearest depth), nearest first."""
        if version is None:
            cur = self.current(name)
            if cur is None:
                raise KeyError(f"no current version of dataset '{name}'")
            version = cur.version
        return self.query(
            """
            WITH RECURSIVE up(name, version, parent_name, parent_version, depth) AS (
                SELECT name, version, parent_name, parent_version, 1 FROM lineage
                WHERE name = ? AND version = ?
                UNION ALL
                SELECT l.name, l.version, l.parent_name, l.parent_version, up.depth + 1
                FROM lineage l JOIN up ON l.name = up.parent_name AND l.version = up.parent_version
            )
            SELECT min(depth) AS depth, name, version, parent_name, parent_version FROM up
            GROUP BY name, version, parent_name, parent_version
            ORDER BY depth, name, parent_name, parent_version
            """,
            [name, version],
        )


def remembered_data_root(path: str | Path) -> str | None:
    """The remote data root a catalog file recorded (None: the data is beside it)."""
    if not Path(path).is_file():
        return None
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None  # busy or unreadable: the command that opens it reports that
    try:
        row = con.execute("SELECT value FROM settings WHERE key = 'data_root'").fetchall()
    except duckdb.CatalogException:
        return None  # a catalog from before the settings table
    finally:
        con.close()
    return row[0][0] if row else None


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a catalog made by an earlier release up to this DDL.

    Before index versions were datasets they lived in a table `indexes`; that table is dropped
    (the next index stage rebuilds from the embeddings) so the view of the same name can exist.
    """
    kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'indexes' "
                       "AND table_schema = 'main'").fetchone()
    if kind and kind[0] == "BASE TABLE":
        log.warning("catalog migration: the old `indexes` table is replaced by dataset versions "
                    "indexes/<name>; the next build rebuilds the indexes")
        con.execute("DROP TABLE indexes")


def _backfill_reason_codes(con: duckdb.DuckDBPyConnection) -> None:
    """Quarantine rows from before the code column get the code add_quarantine gives new ones."""
    from tasks.runtime.reasons import reason_code

    reasons = [r[0] for r in con.execute("SELECT DISTINCT reason FROM quarantine WHERE code IS NULL").fetchall()]
    for reason in reasons:
        con.execute("UPDATE quarantine SET code = ? WHERE code IS NULL AND reason = ?", [reason_code(reason), reason])


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - containers without a passwd entry
        return str(os.getuid())


def json_dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
