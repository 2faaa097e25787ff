"""Before a run writes anything: are the catalog's folder and the data root writable folders?

Without this check a workdir that is a file, or a read-only data root, surfaces as a raw
traceback from deep inside DuckDB or pyarrow; here it is one line naming the path and the fix.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tasks.runtime.catalog import CatalogError


class WorkdirError(CatalogError):
    """The run's workdir, catalog folder or data root cannot be written."""


def writable_dir(path: str | Path, role: str, setting: str) -> None:
    p = Path(path)
    blocker = next((a for a in [p, *p.parents] if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise WorkdirError(f"the {role} {p} cannot be a folder: {blocker} is a file. Set `{setting}` in the "
                           "config to a folder (or move that file away).")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".corpusforge-write-check-"):
            pass
    except OSError as e:
        raise WorkdirError(f"the {role} {p} is not writable ({e.strerror or e}); a run writes there. Set "
                           f"`{setting}` in the config to a writable folder.") from None


def check_run_paths(config) -> None:
    """The catalog's folder and a local data root must be writable folders; object stores are
    checked by their first write."""
    writable_dir(Path(config.catalog_path).parent, "catalog folder", "workdir (or catalog)")
    cat = Path(config.catalog_path)
    if cat.exists() and not cat.is_file():
        raise WorkdirError(f"the catalog path {cat} is a folder, not a DuckDB file. Set `catalog` in the config.")
    if cat.exists() and not os.access(cat, os.W_OK):
        raise WorkdirError(f"the catalog {cat} is read-only; a run writes to it. Read-only commands "
                           "(datasets, sql, quarantine) work on it as it is.")
    uri = config.data_root_uri
    if "://" not in uri or uri.startswith("file://"):
        writable_dir(uri.removeprefix("file://"), "data root", "data_root (or workdir)")
