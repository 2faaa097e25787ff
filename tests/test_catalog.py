"""Catalog, atomic publish, validation gate, run lock and config errors, on real DuckDB files."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from schemas.config import ConfigError, config_from_dict, load_config
from schemas.tables import DOCUMENTS
from tasks.runtime.catalog import Catalog, CatalogBusy
from tasks.runtime.publish import content_hash, publish, read
from tasks.runtime.stage import Output
from tasks.runtime.storage import DataRoot
from tasks.runtime.validation import ValidationFailed
from tests.conftest import REPO


def docs(*texts: str) -> pa.Table:
    rows = [{"doc_id": f"{i:032x}", "modality": "text", "text": t, "source": "test"} for i, t in enumerate(texts)]
    return pa.Table.from_pylist(rows, schema=DOCUMENTS)


@pytest.fixture
def store(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    return Catalog(tmp_path / "cat.duckdb", root), root


def test_versions_current_flag_and_unchanged_content(store):
    cat, root = store
    v1 = publish(cat, root, "documents", docs("a", "b")).dataset
    same = publish(cat, root, "documents", docs("a", "b").take([1, 0]))  # row order does not matter
    assert not same.published and same.dataset.version == 1
    v2 = publish(cat, root, "documents", docs("a", "b", "c")).dataset
    assert (v1.version, v2.version) == (1, 2)
    assert cat.current("documents").version == 2
    flags = cat.query("SELECT version, is_current FROM datasets ORDER BY version").to_pylist()
    assert flags == [{"version": 1, "is_current": False}, {"version": 2, "is_current": True}]
    assert read(cat, root, "documents", 1).num_rows == 2
    assert read(cat, root, "documents").num_rows == 3
    assert cat.query("SELECT count(*) AS n FROM documents").to_pylist() == [{"n": 3}]  # the view follows


def test_lineage_is_recorded_and_walked(store):
    cat, root = store
    d = publish(cat, root, "documents", docs("a")).dataset
    from schemas.tables import embeddings_schema

    emb = pa.table({"item_id": ["x"], "item_kind": ["document"], "doc_id": ["x"], "content_sha256": ["h"],
                    "space": ["m@r"], "vector": pa.array([[0.1, 0.2]], pa.list_(pa.float32(), 2))},
                   schema=embeddings_schema(2))
    e = publish(cat, root, "embeddings/text", emb, parents=[d]).dataset
    lin = cat.lineage("embeddings/text").to_pylist()
    assert lin == [{"depth": 1, "name": "embeddings/text", "version": e.version,
                    "parent_name": "documents", "parent_version": d.version}]
    back = read(cat, root, "embeddings/text")
    assert back.schema.field("vector").type == pa.list_(pa.float32(), 2)


def test_validation_failure_blocks_publish_and_keeps_previous(store):
    cat, root = store
    publish(cat, root, "documents", docs("a"))
    bad = docs("x", "y", "z").set_column(2, "modality", pa.array(["text", "video", "audio"]))
    with pytest.raises(ValidationFailed) as err:
        publish(cat, root, "documents", bad)
    failures = {f["expectation"]: f["unexpected_count"] for f in err.value.report.failures}
    assert failures["expect_column_values_to_be_in_set"] == 2
    assert "failed on 2 rows" in str(err.value)
    assert cat.current("documents").version == 1
    assert cat.query("SELECT count(*) AS n FROM datasets").to_pylist() == [{"n": 1}]
    assert root.list_files(root.path("_staging")) == []  # the staged file is gone


def test_extra_expectations_from_config_can_block(store):
    cat, root = store
    extra = [{"type": "expect_column_value_lengths_to_be_between", "kwargs": {"column": "text", "max_value": 3}}]
    with pytest.raises(ValidationFailed) as err:
        publish(cat, root, "documents", docs("short", "a much longer text"), extra_expectations=extra)
    assert err.value.report.failures[0]["unexpected_count"] == 2


def test_contract_refuses_missing_columns(store):
    cat, root = store
    with pytest.raises(ValueError, match=r"missing=\['source'\]"):
        publish(cat, root, "documents", docs("a").drop(["source"]))


def test_content_hash_is_order_independent():
    t = docs("a", "b", "c")
    assert content_hash("documents", t) == content_hash("documents", t.take([2, 0, 1]))
    assert content_hash("documents", t) != content_hash("documents", docs("a", "b", "d"))


CRASH = textwrap.dedent("""
    import os, signal, sys
    import pyarrow as pa
    sys.path.insert(0, {repo!r})
    from tasks.runtime import versions
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.publish import publish
    from tasks.runtime.storage import DataRoot
    from tests.test_catalog import docs
    root = DataRoot({data!r})
    real_commit = versions.commit
    def commit_then_die(*args, **kwargs):
        real_commit(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # killed after the shards' commit, before the catalog's
    versions.commit = commit_then_die
    publish(Catalog({cat!r}, root), root, "documents", docs("a", "b", "c"))
""")


def test_crash_between_write_and_commit_leaves_previous_current(store, tmp_path):
    from tasks.runtime import versions

    cat, root = store
    publish(cat, root, "documents", docs("a"))
    script = CRASH.format(repo=str(REPO), data=str(tmp_path / "data"), cat=cat.path)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == -9, proc.stderr
    lance = versions.open_dataset(root.lance_uri("documents"))
    assert lance.latest_version > cat.current("documents").table_version  # the orphan shards exist...
    cur = cat.current("documents")
    assert (cur.version, cur.row_count) == (1, 1)  # ...but no partial version is visible
    assert read(cat, root, "documents").num_rows == 1
    again = publish(cat, root, "documents", docs("a", "b", "c")).dataset
    assert (again.version, again.row_count) == (2, 3)
    assert read(cat, root, "documents").num_rows == 3


HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from tasks.runtime.catalog import Catalog
    with Catalog({cat!r}).run_lock(5, holder="refresh A"):
        print("locked", flush=True)
        time.sleep({hold})
""")


def test_second_run_waits_for_the_lock_then_fails_clearly(store):
    cat, _ = store
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), cat=cat.path, hold=30)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CatalogBusy, match="locked by refresh A"):
            with cat.run_lock(timeout_s=0.5, holder="refresh B"):
                pass
        assert cat.query("SELECT count(*) AS n FROM datasets").to_pylist() == [{"n": 0}]  # still readable
    finally:
        proc.kill()
        proc.wait()
    with cat.run_lock(timeout_s=5, holder="refresh B"):  # released when the holder dies
        pass


def test_waiting_run_proceeds_when_the_holder_finishes(store):
    cat, _ = store
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), cat=cat.path, hold=1.5)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    with cat.run_lock(timeout_s=30, holder="refresh B"):
        waited = time.monotonic() - t0
    proc.wait()
    assert waited > 0.5  # it waited instead of interleaving


def test_invalid_config_names_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncorpus: {root: ., sources: [{kind: folder, path: .}]}\nembed: {actors: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "corpus.sources.0.kind" in msg and "embed.actors" in msg
    with pytest.raises(ConfigError, match="embedd: Extra inputs are not permitted"):
        config_from_dict({"corpus": {"root": ".", "sources": [{"kind": "manifest", "path": "x"}]}, "embedd": {}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_data_root_accepts_filesystem_uris(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    root = DataRoot((tmp_path / "d").as_uri())
    ds = publish(cat, root, "documents", docs("a")).dataset
    assert ds.path == "documents.lance"  # stored relative to the data root
    assert Path(root.absolute(ds.path)).is_dir() and read(cat, root, "documents").num_rows == 1


def test_sample_config_paths_resolve_relative_to_the_file():
    from tests.conftest import SAMPLE_CONFIG

    cfg = load_config(SAMPLE_CONFIG)
    assert cfg.corpus_root == (REPO / "infra" / "sample_corpus").resolve()
    assert cfg.catalog_path == str((REPO / ".corpusforge" / "catalog.duckdb").resolve())


def test_a_document_whose_modality_does_not_match_its_content_is_refused(store):
    cat, root = store
    t = docs("a", "b").set_column(2, "modality", pa.array(["image", "text"]))  # claims an image it lacks
    with pytest.raises(ValidationFailed) as err:
        publish(cat, root, "documents", t)
    assert [(f["column"], f["unexpected_count"]) for f in err.value.report.failures] == [("__modality_matches_content", 1)]


OLD_DATASETS = """CREATE TABLE datasets (name VARCHAR NOT NULL, version INTEGER NOT NULL, path VARCHAR NOT NULL,
    row_count BIGINT NOT NULL, content_hash VARCHAR NOT NULL, schema_fingerprint VARCHAR NOT NULL,
    validation VARCHAR NOT NULL, is_current BOOLEAN NOT NULL, run_id VARCHAR, stage VARCHAR,
    fingerprint VARCHAR, created_at TIMESTAMP NOT NULL, meta VARCHAR, PRIMARY KEY (name, version))"""


def test_a_catalog_from_before_sharded_versions_is_refused_with_how_to_rebuild(tmp_path, capsys):
    """A catalog whose versions are single Parquet files (no Lance table version) is not read as if
    it were current: a build refuses it, naming the catalog and the way out, and exits 1."""
    import duckdb

    from flows.cli import main

    work = tmp_path / "work"
    work.mkdir()
    con = duckdb.connect(str(work / "catalog.duckdb"))
    con.execute(OLD_DATASETS)
    con.execute("INSERT INTO datasets VALUES ('documents', 1, 'documents/v1.parquet', 3, 'h', 's', '{}', true, "
                "'r', 'ingest', 'f', now(), NULL)")
    con.close()
    config = tmp_path / "old.yaml"
    config.write_text(textwrap.dedent(f"""
        name: old
        workdir: {work}
        corpus: {{root: {REPO / 'infra' / 'sample_corpus'}, sources: [{{kind: manifest, path: documents.jsonl}}]}}
    """))
    assert main(["build", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "documents@v1" in err and "earlier corpusforge" in err and "corpusforge build" in err
    assert str(work / "catalog.duckdb") in err
    cat = Catalog(work / "catalog.duckdb")  # the migration added the column and kept the row
    assert cat.current("documents").table_version is None
    assert cat.query("SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 0}]  # refused before it started


def test_a_path_already_under_the_root_is_not_nested_again(tmp_path, monkeypatch):
    """Object-store paths (bucket/prefix/...) have no leading `/`: joining a full path to the root's
    base again must not nest the root inside itself, or writers and readers disagree on a path."""
    root = DataRoot(str(tmp_path / "d"))
    root.base = "bucket/prefix"  # the shape of an s3:// root's base
    full = root.path("_staging", "run", "ingest")
    assert full == "bucket/prefix/_staging/run/ingest"
    assert root.path(full, "documents", "part-1.parquet") == "bucket/prefix/_staging/run/ingest/documents/part-1.parquet"
    assert root.path(root.relative(full)) == full


@pytest.mark.parametrize("take_below", [0.25, 0.0], ids=["reads-matched-rows", "scans-the-version"])
def test_an_upsert_replaces_changed_rows_keeps_identical_ones_and_adds_new(store, monkeypatch, take_below):
    """An upsert hashes only the current rows its keys match (or, past TAKE_BELOW, scans them all):
    either way a changed row is replaced, an identical one is kept where it is, a new key is added
    and a key it does not bring is left alone."""
    from tasks.runtime import publish as publish_module
    from tasks.runtime import versions

    monkeypatch.setattr(publish_module, "TAKE_BELOW", take_below)
    cat, root = store
    first = publish(cat, root, "documents", docs(*[f"text {i}" for i in range(40)])).dataset
    rows = docs(*[f"text {i}" for i in range(40)]).to_pylist()
    rows[3]["text"] = "text 3, edited"
    brought = [rows[3], rows[7]] + [{"doc_id": f"{99:032x}", "modality": "text", "text": "new", "source": "test"}]
    second = publish(cat, root, "documents", Output(pa.Table.from_pylist(brought, schema=DOCUMENTS), mode="upsert",
                                                    upsert_keys=["doc_id"])).dataset
    got = {r["doc_id"]: r["text"] for r in read(cat, root, "documents").to_pylist()}
    expected = {r["doc_id"]: r["text"] for r in rows} | {f"{99:032x}": "new"}
    assert got == expected and second.row_count == 41
    ds = versions.open_dataset(root.absolute(second.path), second.table_version)
    assert ds.count_rows() - versions.open_dataset(root.absolute(first.path), first.table_version).count_rows() == 1
    # only the edited row and the new one were written: one deletion, two rows appended
    assert sum(f.count_rows() for f in ds.get_fragments()) == 41 and len(ds.get_fragments()) == 2


def test_wide_rows_make_smaller_shards_and_a_refresh_shares_them(store):
    """Shards are bounded in bytes as well as rows (what staging and validating one costs the
    driver does not grow with the row width); an upsert that adds rows writes new shards only."""
    from schemas.tables import embeddings_schema
    from tasks.runtime import versions

    cat, root = store
    dim = 4096
    schema = embeddings_schema(dim)
    per_shard = versions.shard_rows(schema)
    assert per_shard < versions.SHARD_ROWS and versions.shard_rows(DOCUMENTS) > per_shard

    def emb(lo: int, hi: int) -> pa.Table:
        vec = np.random.default_rng(lo).standard_normal((hi - lo, dim), dtype=np.float32)
        ids = [f"e{i:06d}" for i in range(lo, hi)]
        return pa.table({"item_id": ids, "item_kind": ["document"] * len(ids), "doc_id": ids,
                         "content_sha256": ids, "space": ["m@r"] * len(ids),
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), dim)}, schema=schema)

    first = publish(cat, root, "embeddings/text", emb(0, per_shard + 10)).dataset
    ds = versions.open_dataset(root.absolute(first.path), first.table_version)
    before = {f.fragment_id: f.count_rows() for f in ds.get_fragments()}
    assert sorted(before.values()) == [10, per_shard]

    second = publish(cat, root, "embeddings/text", Output(emb(per_shard + 10, per_shard + 20), mode="upsert",
                                                          upsert_keys=["item_id"])).dataset
    after = versions.open_dataset(root.absolute(second.path), second.table_version)
    frags = {f.fragment_id: f.count_rows() for f in after.get_fragments()}
    assert {k: frags[k] for k in before} == before and len(frags) == 3  # the old shards, shared
    assert second.row_count == per_shard + 20
