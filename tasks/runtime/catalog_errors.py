"""Why a catalog file could not be opened, in one line that names the file (and the process
holding it), and the lock-down of a read-only connection.

DuckDB's own messages name neither the catalog's role nor what to do; a raw traceback from a
corrupt file or another process's lock is the most common first-run confusion.
"""
from __future__ import annotations

import re


def open_error(path: str, err: Exception, read_only: bool) -> Exception:
    from tasks.runtime.catalog import CatalogBusy, CatalogError

    msg = str(err)
    if "lock" in msg.lower():
        pid = re.search(r"PID (\d+)", msg)
        who = f"process {pid.group(1)} ({_cmdline(pid.group(1))})" if pid else "another process"
        return CatalogBusy(f"catalog {path} is held open by {who}; close it there (a notebook, a `duckdb` shell, "
                           f"another corpusforge command) and retry. Readers should open it read-only.")
    if "read-only" in msg.lower() or "permission" in msg.lower() or "readonly" in msg.lower():
        return CatalogError(f"catalog {path} cannot be opened for writing ({_first_line(msg)}); a build needs a "
                            "writable workdir, read-only commands open it read-only")
    return CatalogError(f"catalog {path} cannot be opened{' read-only' if read_only else ''}: it is not a readable "
                        f"DuckDB catalog (corrupt, truncated or another kind of file): {_first_line(msg)}. "
                        "Move it aside and rebuild, or restore it from a backup.")


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:300] if msg.strip() else "no detail"


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\x00", b" ").decode("utf-8", "replace").strip()[:200] or "unknown command"
    except OSError:
        return "command unknown"


def lock_down(con) -> None:
    """A read-only catalog connection that cannot write files either: no COPY TO, no ATTACH, no
    extension loading; locked so the SQL that follows cannot switch it back."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
