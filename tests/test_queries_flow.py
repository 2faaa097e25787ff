"""Captions and queries inside the `build` flow (real Prefect, Ray, DuckDB, GX), offline and over HTTP."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tasks.runtime.catalog import Catalog
from tests.openai_stub import StubServer
from tests.test_build_flow import make_config, stage_rows


def artifacts(keys: list[str], result: dict | None = None):
    """Artifacts under these keys; with a build's `result`, that build's only (other tests build
    the same sample corpus under the same keys)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    by_run = None
    if result is not None:
        flow_run = Catalog(result["catalog"]).query("SELECT prefect_flow_run_id FROM runs WHERE run_id = ?",
                                                    [result["run_id"]])["prefect_flow_run_id"][0].as_py()
        by_run = ArtifactFilterFlowRunId(any_=[UUID(flow_run)])

    async def fetch():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys),
                                                                              flow_run_id=by_run))

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def offline_build(prefect_harness, ray_local, tmp_path_factory):
    from flows.build import build

    tmp = tmp_path_factory.mktemp("queries-flow")
    config = make_config(tmp)
    return tmp, config, build(config_path=str(config))


def test_captions_and_queries_are_published_with_lineage(offline_build):
    _, _, result = offline_build
    stages = stage_rows(result["catalog"], result["run_id"])
    assert stages["caption"]["rows_in"] == 17 and stages["caption"]["rows_quarantined"] == 1
    assert result["datasets"]["captions"]["rows"] == 16
    assert stages["queries"]["rows_in"] == stages["queries"]["rows_out"] + stages["queries"]["rows_quarantined"]
    assert stages["queries"]["rows_out"] < result["datasets"]["queries"]["rows"] <= 2 * stages["queries"]["rows_out"]
    cat = Catalog(result["catalog"])
    parents = {r["parent_name"] for r in cat.lineage("queries").to_pylist()}
    assert parents == {"documents", "captions", "indexes/text", "embeddings/text"}  # round-trip searches the index
    kinds = cat.query("SELECT DISTINCT item_kind FROM embeddings_text")
    assert set(kinds["item_kind"].to_pylist()) == {"document", "caption"}  # captions were embedded


def test_query_artifacts(offline_build):
    arts = artifacts(["sample-queries-per-target", "sample-queries-filter-pass-rates", "sample-queries-sample"],
                     offline_build[2])
    assert {a.key for a in arts} == {"sample-queries-per-target", "sample-queries-filter-pass-rates", "sample-queries-sample"}
    per_target = json.loads(next(a for a in arts if a.key == "sample-queries-per-target").data)
    assert {r["target"] for r in per_target} == {"text", "image", "text+image"}
    assert all(r["queries"] > 0 for r in per_target)
    md = next(a for a in arts if a.key == "sample-queries-sample").data
    assert "### Sampled queries" in md and md.count("\n| ") >= 3 + 5 + 10


def test_rerun_generates_nothing_and_publishes_nothing_new(offline_build):
    from flows.build import build

    _, config, first = offline_build
    again = build(config_path=str(config))
    stages = stage_rows(again["catalog"], again["run_id"])
    n_texts = Catalog(again["catalog"]).query("SELECT count(DISTINCT text) AS n FROM queries").column("n")[0].as_py()
    # every unit's generation and every query's vector came from the cache
    assert stages["queries"]["model_calls"] == 0
    assert stages["queries"]["cache_hits"] == stages["queries"]["rows_out"] + n_texts
    assert again["datasets"]["queries"] == first["datasets"]["queries"]
    assert again["datasets"]["captions"] == first["datasets"]["captions"]


def test_openai_backends_in_the_flow_never_leak_the_key(prefect_harness, ray_local, tmp_path, monkeypatch, caplog):
    from flows.build import build

    key = "sk-flow-key-5a5a5a5a5a"
    monkeypatch.setenv("CF_FLOW_KEY", key)
    config = make_config(tmp_path)
    manifest = tmp_path / "corpus" / "documents.jsonl"
    manifest.write_text(manifest.read_text() + json.dumps({"id": "boom", "text": "ALWAYS500 breaks the model"}) + "\n")
    with StubServer(api_key=key) as server, caplog.at_level(logging.DEBUG):
        endpoint = {"base_url": server.base_url, "api_key_env": "CF_FLOW_KEY", "max_retries": 1, "backoff_s": 0.01}
        import yaml

        raw = yaml.safe_load(config.read_text())
        raw["caption"] = {"backend": "openai", "model": "stub-vlm", "openai": endpoint}
        raw["queries"] = {"backend": "openai", "model": "stub-llm", "targets": ["text", "image"], "openai": endpoint}
        config.write_text(yaml.safe_dump(raw))
        result = build(config_path=str(config))
    assert server.auth_failures == 0
    stages = stage_rows(result["catalog"], result["run_id"])
    assert stages["caption"]["model_calls"] == 17 and stages["caption"]["rows_quarantined"] == 0
    q = Catalog(result["catalog"]).query("SELECT key, reason FROM quarantine WHERE stage = 'queries'").to_pylist()
    assert len(q) == 1 and q[0]["key"].endswith("/text") and "HTTP 500" in q[0]["reason"]

    work = tmp_path / "work"
    for f in work.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f"API key found in {f}"
    for a in artifacts(["sample-queries-per-target", "sample-queries-filter-pass-rates", "sample-queries-sample", "sample-build-stages",
                        "sample-build-quarantine"], result):
        assert key not in str(a.data)
    assert key not in caplog.text


def test_cli_shows_queries_and_captions(offline_build, capsys):
    from flows.cli import main

    _, _, result = offline_build
    assert main(["queries", "--catalog", result["catalog"], "--summary"]) == 0
    out = capsys.readouterr().out
    assert "text+image" in out and "roundtrip" in out and "candidates" in out
    assert main(["queries", "--catalog", result["catalog"], "--target", "image", "--format", "json", "--limit", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and {r["target"] for r in rows} == {"image"}
    assert main(["captions", "--catalog", result["catalog"], "--source", "alt_text", "--limit", "2"]) == 0
    assert "alt_text" in capsys.readouterr().out
