"""An `s3://` data root against a real S3 endpoint: moto in server mode on 127.0.0.1.

The builds run as `corpusforge` subprocesses, so that their local Ray workers (which write the
embedding shards straight to the bucket) get the endpoint and credentials from their own
environment, the way cluster nodes do; the catalog stays a local DuckDB file.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.test_build_flow import make_config

BUCKET = "corpus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on loopback with one bucket; yields the environment that points at it."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def on_s3(s3_env, monkeypatch):
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    return s3_env


def corpusforge(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    full = os.environ | env | {"PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def s3_keys(env: dict, prefix: str) -> dict[str, int]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys |= {o["Key"]: o["Size"] for o in page.get("Contents", [])}
    return keys


def test_build_refresh_sql_and_export_on_an_s3_data_root(prefect_harness, on_s3, tmp_path):
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.publish import read
    from tasks.runtime.storage import DataRoot

    config = make_config(tmp_path, data_root=f"s3://{BUCKET}/build", catalog=str(tmp_path / "catalog.duckdb"),
                         tree={"enabled": False})
    corpusforge(on_s3, "build", "--config", str(config))
    first = s3_keys(on_s3, "build/")
    assert any(k.startswith("build/documents.lance/data/") for k in first)
    assert any(k.startswith("build/embeddings__text.lance/data/") for k in first), sorted({k.split("/")[1] for k in first})
    assert not [p for p in (tmp_path / "work").rglob("*.lance")]  # nothing of the data went to local disk
    catalog = Catalog(tmp_path / "catalog.duckdb", DataRoot(f"s3://{BUCKET}/build"))
    v1 = catalog.current("documents")

    manifest = tmp_path / "corpus" / "documents.jsonl"
    new = [{"id": f"s3-new-{i}", "text": f"Container ship number {i} unloading at the quay."} for i in range(3)]
    manifest.write_text(manifest.read_text() + "".join(json.dumps(r) + "\n" for r in new))
    corpusforge(on_s3, "build", "--config", str(config))
    v2 = catalog.current("documents")
    assert (v2.version, v2.row_count) == (v1.version + 1, v1.row_count + 3)
    run = catalog.query("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").column(0)[0].as_py()
    calls = catalog.query("SELECT model_calls FROM stage_runs WHERE run_id = ? AND stage = 'embed_text'",
                          [run]).column(0)[0].as_py()
    assert calls == 3  # only the new texts were embedded
    second = s3_keys(on_s3, "build/")
    kept = [k for k in first if k.startswith("build/documents.lance/data/")]
    assert all(second[k] == first[k] for k in kept)  # v1's shards are shared, not rewritten
    new_doc_bytes = sum(v for k, v in second.items() if k.startswith("build/documents.lance/data/") and k not in first)
    assert 0 < new_doc_bytes < sum(first[k] for k in kept)  # the refresh wrote only the delta's shard
    assert read(catalog, catalog.data_root(), "documents", version=v1.version).num_rows == v1.row_count

    out = corpusforge(on_s3, "sql", "--catalog", str(tmp_path / "catalog.duckdb"), "--format", "json",
                      "SELECT count(*) AS n FROM documents WHERE source_id LIKE 's3-new-%'")
    assert json.loads(out.stdout[out.stdout.index("["):]) == [{"n": 3}]

    export = tmp_path / "export"
    corpusforge(on_s3, "export", "--config", str(config), "--kind", "mbeir", "--kind", "flagembedding",
                "--images", "copy", "--out", str(export))
    candidates = [json.loads(line) for f in export.rglob("*_cand_pool.jsonl") for line in f.read_text().splitlines()]
    assert len(candidates) == v2.row_count - catalog.query(
        "SELECT count(*) FROM documents WHERE modality = 'text' AND text IS NULL").column(0)[0].as_py()
    images = [p for p in export.rglob("images/*") if p.is_file()]
    assert images and all(p.stat().st_size > 0 for p in images)  # found through the corpus root of the run
    train = [json.loads(line) for f in export.rglob("train.jsonl") for line in f.read_text().splitlines()]
    assert train and all(r["pos"] and r["neg"] for r in train)


CRASH = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tasks.runtime import versions
from tasks.runtime.catalog import Catalog
from tasks.runtime.publish import publish
from tasks.runtime.storage import DataRoot
from tests.test_catalog import docs
root = DataRoot({root!r})
cat = Catalog({cat!r}, root)
if {crash}:
    real_commit = versions.commit
    def commit_then_die(*args, **kwargs):
        real_commit(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # the shards and the Lance commit are on S3; the catalog is not
    versions.commit = commit_then_die
publish(cat, root, "documents", docs(*{texts!r}))
"""


def test_a_crash_mid_commit_on_s3_leaves_the_previous_version_current(on_s3, tmp_path):
    from tasks.runtime import versions
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.publish import publish, read
    from tasks.runtime.storage import DataRoot
    from tests.test_catalog import docs

    uri, cat_path = f"s3://{BUCKET}/crash", str(tmp_path / "cat.duckdb")

    def script(crash: bool, texts: tuple) -> subprocess.CompletedProcess:
        code = CRASH.format(repo=str(REPO), root=uri, cat=cat_path, crash=crash, texts=texts)
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ.copy(),
                              capture_output=True, text=True, timeout=120)

    assert script(False, ("a",)).returncode == 0
    assert script(True, ("a", "b", "c")).returncode == -9
    root = DataRoot(uri)
    cat = Catalog(cat_path, root)
    lance = versions.open_dataset(root.lance_uri("documents"), storage_options=root.storage_options)
    assert lance.latest_version > cat.current("documents").table_version  # the orphan commit is on S3...
    assert (cat.current("documents").version, cat.current("documents").row_count) == (1, 1)  # ...but unseen
    assert read(cat, root, "documents").num_rows == 1
    again = publish(cat, root, "documents", docs("a", "b", "c", "d")).dataset
    assert (again.version, again.row_count) == (2, 4) and read(cat, root, "documents").num_rows == 4
