"""Read-only commands cannot write, print inert text, and name the file when the catalog is bad;
a run refuses an unusable workdir in one line; a reader holding the file is named."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from flows.cli import main
from schemas.config import config_from_dict
from tasks.runtime.catalog import Catalog, CatalogBusy, CatalogError
from tasks.runtime.storage import DataRoot
from tasks.runtime.write import seed
from tests.conftest import REPO


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    tmp_path = tmp_path_factory.mktemp("cat")
    path = tmp_path / "catalog.duckdb"
    cat = Catalog(path, DataRoot(str(tmp_path / "data")))
    docs = pa.table({"doc_id": ["0" * 32], "source_id": ["s1"], "modality": ["text"],
                     "text": ["evil \x1b[2J\x1b]52;c;cHduZWQ=\x07 text \u202e"], "image_uri": pa.array([None], pa.string()),
                     "image_sha256": pa.array([None], pa.string()), "image_width": pa.array([None], pa.int32()),
                     "image_height": pa.array([None], pa.int32()), "image_format": pa.array([None], pa.string()),
                     "alt_text": pa.array([None], pa.string()), "source": ["m"], "meta": pa.array([None], pa.string())})
    seed(cat, cat.data_root(), "documents", docs)
    return str(path)


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("sql", ["DROP TABLE datasets", "DELETE FROM runs", "UPDATE datasets SET is_current = false",
                                 "CREATE TABLE x AS SELECT 1", "COPY datasets TO '{out}'",
                                 "ATTACH '{db}' AS other; CREATE TABLE other.t AS SELECT 1",
                                 "SET lock_configuration = false; COPY datasets TO '{out}'"])
def test_sql_command_cannot_write(catalog, tmp_path, sql):
    before = sha(catalog)
    out, db = tmp_path / "leak.csv", tmp_path / "other.duckdb"
    with pytest.raises(SystemExit, match="SQL error"):
        main(["sql", "--catalog", catalog, sql.format(out=out, db=db)])
    assert not out.exists() and not db.exists()
    assert sha(catalog) == before
    assert Catalog(catalog).query("SELECT count(*) AS n FROM datasets WHERE is_current")["n"][0].as_py() == 1


@pytest.mark.parametrize("sql", [";", "-- a comment only", "  ;; "])
def test_sql_with_no_statement_returning_rows_says_so(catalog, sql):
    with pytest.raises(SystemExit, match="nothing to show.*write a SELECT"):
        main(["sql", "--catalog", catalog, "--", sql])


def test_sql_reads_views_and_prints_no_terminal_escapes(catalog, capsys):
    before = sha(catalog)
    assert main(["sql", "--catalog", catalog, "SELECT text FROM documents"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out and "evil" in out
    assert main(["datasets", "--catalog", catalog]) == 0
    assert sha(catalog) == before  # read-only commands never write the file


def test_a_corrupt_catalog_is_named_in_one_line(tmp_path, capsys):
    bad = tmp_path / "catalog.duckdb"
    bad.write_bytes(b"this is not a duckdb file" * 200)
    assert main(["datasets", "--catalog", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CatalogError, match=str(bad)):
        Catalog(bad)


def test_a_reader_holding_the_catalog_is_named(catalog):
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], "
                               "read_only=True); print('ready', flush=True); time.sleep(60)", catalog],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(CatalogBusy, match=rf"held open by process {holder.pid}"):
            with Catalog(catalog, read_only=True).connect(read_only=False, retries=2):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_run_refuses_a_workdir_that_is_a_file(tmp_path):
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.preflight import WorkdirError

    (tmp_path / "work").write_text("a file, not a folder")
    cfg = config_from_dict({"workdir": str(tmp_path / "work")})
    with pytest.raises(WorkdirError, match=r"work is a file"):
        with open_run(cfg, "build"):
            pass
    cfg = config_from_dict({"workdir": str(tmp_path / "w2"), "data_root": str(tmp_path / "work" / "data")})
    with pytest.raises(WorkdirError, match="data root"):
        with open_run(cfg, "build"):
            pass


def test_a_deleted_data_file_is_detected_and_republished(tmp_path):
    from tasks.runtime.publish import publish, read

    cat = Catalog(tmp_path / "catalog.duckdb", DataRoot(str(tmp_path / "data")))
    from schemas.tables import DOCUMENTS

    table = pa.Table.from_pylist([{"doc_id": c * 32, "modality": "text", "text": t, "source": "m"}
                                  for c, t in (("0", "a"), ("1", "b"))], schema=DOCUMENTS)
    v1 = publish(cat, cat.data_root(), "documents", table).dataset
    for f in (tmp_path / "data" / "documents.lance" / "data").iterdir():
        f.unlink()  # the user (or a failed sync) removed the data
    again = publish(cat, cat.data_root(), "documents", table)
    assert again.published and again.dataset.version == v1.version + 1
    assert sorted(read(cat, cat.data_root(), "documents")["text"].to_pylist()) == ["a", "b"]
