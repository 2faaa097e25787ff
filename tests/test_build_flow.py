"""The `build` flow through real Prefect (ephemeral API) and local Ray, on the sample corpus."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from schemas.config import load_config
from tasks.runtime.catalog import Catalog
from tasks.runtime.ray_session import ResourceUnavailable
from tasks.runtime.validation import ValidationFailed
from tests.conftest import SAMPLE_CONFIG


def make_config(tmp_path: Path, **overrides) -> Path:
    """The sample config with its own corpus copy and work dir under tmp_path."""
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        shutil.copytree(load_config(SAMPLE_CONFIG).corpus_root, corpus)
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["corpus"]["root"] = str(corpus)
    raw["workdir"] = str(tmp_path / "work")
    raw.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def distinct_texts(catalog: str) -> int:
    """Texts the embed stage must embed: document texts and captions, identical texts once."""
    return Catalog(catalog).query(
        "SELECT count(DISTINCT text) AS n FROM (SELECT text FROM documents WHERE text IS NOT NULL "
        "UNION ALL SELECT text FROM captions)").column("n")[0].as_py()


def stage_rows(catalog: str, run_id: str) -> dict[str, dict]:
    rows = Catalog(catalog).query("SELECT * FROM stage_runs WHERE run_id = ?", [run_id]).to_pylist()
    return {r["stage"]: r for r in rows}


@pytest.fixture(scope="module")
def first_build(prefect_harness, ray_local, tmp_path_factory):
    from flows.build import build

    tmp = tmp_path_factory.mktemp("flow")
    config = make_config(tmp)
    return tmp, config, build(config_path=str(config))


def test_build_publishes_counts_and_accounts_for_every_row(first_build):
    _, config, result = first_build
    assert result["datasets"]["documents"] == {"version": 1, "rows": 27}
    n_captions = result["datasets"]["captions"]["rows"]
    assert n_captions == 16  # the COCO images carry alt-text; the manifest's image has none
    assert result["datasets"]["embeddings/text"]["rows"] == 19 + n_captions
    stages = stage_rows(result["catalog"], result["run_id"])
    assert set(stages) >= {"ingest", "embed_text"}
    for s in stages.values():
        assert s["status"] == "completed"
        assert s["rows_in"] == s["rows_out"] + s["rows_quarantined"] + s["rows_deduplicated"]
    assert stages["embed_text"]["model_calls"] == distinct_texts(result["catalog"])
    reasons = {q["reason"] for q in result["quarantine"]}
    assert "empty or whitespace-only text" in reasons
    cat = Catalog(result["catalog"])
    assert cat.query("SELECT status FROM runs").to_pylist() == [{"status": "completed"}]
    parents = {r["parent_name"] for r in cat.lineage("embeddings/text").to_pylist() if r["depth"] == 1}
    assert parents == {"documents", "captions"}


def test_prefect_edges_follow_the_declared_inputs(first_build):
    """Each stage's task run lists the upstream task runs that produced the datasets it reads."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tasks.runtime.catalog import Catalog

    _, _, result = first_build
    flow_run_id = Catalog(result["catalog"]).query("SELECT prefect_flow_run_id FROM runs WHERE run_id = ?",
                                                   [result["run_id"]]).column(0)[0].as_py()

    async def fetch():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    runs = asyncio.run(fetch())
    name_of = {str(r.id): r.name for r in runs}
    upstream = {r.name: {name_of.get(str(i.id)) for inputs in r.task_inputs.values() for i in inputs
                         if getattr(i, "input_type", "") == "task_run"} for r in runs}
    assert upstream["ingest"] == set()
    assert upstream["caption"] == {"ingest"}
    assert upstream["embed_text"] == {"ingest", "caption"}
    assert upstream["index"] == {"ingest", "caption", "embed_text"}
    assert upstream["queries"] == {"ingest", "caption", "index"}
    assert {"queries", "ingest", "index"} <= upstream["judge"]
    assert {"ingest", "queries", "index", "judge"} <= upstream["negatives"]


def test_build_writes_prefect_artifacts(first_build):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _, _, result = first_build

    async def fetch():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sample-build-stages", "sample-build-quarantine"])))

    import asyncio

    arts = asyncio.run(fetch())
    stages = [a for a in arts if a.key == "sample-build-stages"][-1]
    data = stages.data if isinstance(stages.data, list) else json.loads(stages.data)
    assert {row["stage"] for row in data} >= {"ingest", "embed_text"}
    md = [a for a in arts if a.key == "sample-build-quarantine"][-1].data
    assert "image path escapes the corpus root" in md

    # the flow run is named after the corpus and the corpusforge run id
    from uuid import UUID

    row = Catalog(result["catalog"]).query("SELECT prefect_flow_run_id FROM runs WHERE run_id = ?",
                                           [result["run_id"]]).to_pylist()[0]

    async def flow_run():
        async with get_client() as client:
            return await client.read_flow_run(UUID(row["prefect_flow_run_id"]))

    assert asyncio.run(flow_run()).name == f"sample {result['run_id']}"


def test_rerun_does_no_model_work_and_adding_documents_embeds_exactly_those(first_build):
    from flows.build import build

    tmp, config, first = first_build
    # resources are never fingerprinted: other batch sizes, pools and devices change nothing
    resized = make_config(tmp, embed={"text": {"batch_size": 7}, "cpus_per_actor": 0.5, "device": "cpu"},
                          judge={"enabled": True, "batch_size": 3, "actors": 2, "local_below": 5},
                          queries={"batch_size": 2}, index={"search_batch": 5}, negatives={"query_batch": 3})
    again = build(config_path=str(resized))
    stages = stage_rows(again["catalog"], again["run_id"])
    assert {name: s["model_calls"] for name, s in stages.items() if s["model_calls"]} == {}  # no stage did model work
    assert again["datasets"] == first["datasets"]  # no new versions for unchanged content
    before = stage_rows(first["catalog"], first["run_id"])
    assert {n: s["fingerprint"] for n, s in stages.items()} == {n: s["fingerprint"] for n, s in before.items()}
    config = make_config(tmp)

    manifest = tmp / "corpus" / "documents.jsonl"
    new = [{"id": f"new-{i}", "text": f"Fresh note number {i} about harbour cranes."} for i in range(4)]
    manifest.write_text(manifest.read_text() + "".join(json.dumps(r) + "\n" for r in new))
    grown = build(config_path=str(config))
    stages = stage_rows(grown["catalog"], grown["run_id"])
    assert stages["embed_text"]["model_calls"] == 4
    assert grown["datasets"]["documents"] == {"version": 2, "rows": 31}


def test_changing_the_model_reruns_nothing_upstream(prefect_harness, ray_local, tmp_path, tiny_sentence_model):
    from flows.build import build

    config = make_config(tmp_path)
    first = build(config_path=str(config))
    switched = make_config(tmp_path, embed={"text": {"model": tiny_sentence_model}})
    second = build(config_path=str(switched))
    stages = stage_rows(second["catalog"], second["run_id"])
    assert stages["embed_text"]["model_calls"] == distinct_texts(second["catalog"])
    assert "ingest" in stages and stages["ingest"]["model_calls"] == 0
    for upstream in ("documents", "captions"):
        assert second["datasets"][upstream]["version"] == first["datasets"][upstream]["version"]
    assert stages["caption"]["model_calls"] == 0
    assert second["datasets"]["embeddings/text"]["version"] == 2


def test_a_failing_expectation_blocks_the_publish_and_fails_the_run(prefect_harness, ray_local, tmp_path):
    from flows.build import build

    config = make_config(tmp_path)
    build(config_path=str(config))
    strict = make_config(tmp_path, validation={"extra": {"documents": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "modality", "value_set": ["text"]}}]}})
    manifest = tmp_path / "corpus" / "documents.jsonl"
    manifest.write_text(manifest.read_text() + json.dumps({"id": "z", "text": "one more"}) + "\n")
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_in_set\\(modality\\) failed on 17 rows"):
        build(config_path=str(strict))
    cat = Catalog(load_config(strict).catalog_path)
    assert cat.current("documents").version == 1
    runs = cat.query("SELECT status, message FROM runs ORDER BY started_at").to_pylist()
    assert runs[-1]["status"] == "failed" and "failed on 17 rows" in runs[-1]["message"]


def test_cuda_on_a_gpu_less_cluster_fails_fast_with_a_clear_message(prefect_harness, ray_local, tmp_path):
    from flows.build import build

    config = make_config(tmp_path, embed={"device": "cuda"})
    with pytest.raises(ResourceUnavailable, match="device: cuda"):
        build(config_path=str(config))


def test_cli_reads_the_catalog(first_build, capsys):
    from flows.cli import main

    _, config, result = first_build
    cat = result["catalog"]
    assert main(["datasets", "--catalog", cat, "--format", "json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert {"documents", "embeddings/text"} <= names
    assert main(["lineage", "embeddings/text", "--config", str(config)]) == 0
    assert "documents" in capsys.readouterr().out
    assert main(["quarantine", "--catalog", cat, "--summary", "--format", "csv"]) == 0
    assert "image file not found" in capsys.readouterr().out
    assert main(["sql", "--catalog", cat, "SELECT count(*) AS n, count(DISTINCT modality) AS m FROM documents",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": Catalog(cat).current("documents").row_count, "m": 3}]
    assert main(["sql", "--catalog", cat, "SELECT len(vector) AS d FROM embeddings_text LIMIT 1", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["d", "384"]
    with pytest.raises(SystemExit, match="SQL error"):
        main(["sql", "--catalog", cat, "SELECT * FROM no_such_table"])
