"""A corpus where every record is quarantined still builds: every stage takes zero input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE_CONFIG


def config_for(tmp_path: Path, lines: list[str]) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "m.jsonl").write_text("\n".join(lines) + "\n")
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["corpus"] = {"root": str(corpus), "sources": [{"kind": "manifest", "path": "m.jsonl"}]}
    raw["workdir"] = str(tmp_path / "work")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_all_quarantined_corpus_builds_and_says_why(prefect_harness, ray_local, tmp_path):
    from flows.build import build
    from tasks.runtime.catalog import Catalog

    config = config_for(tmp_path, [json.dumps({"text": "  "}), '{"text": ', json.dumps({"image": 42})])
    result = build(config_path=str(config))
    cat = Catalog(result["catalog"])
    stages = {r["stage"]: r for r in cat.query("SELECT * FROM stage_runs WHERE run_id = ?", [result["run_id"]]).to_pylist()}
    assert stages["ingest"]["rows_in"] == 3 and stages["ingest"]["rows_quarantined"] == 3
    for s in stages.values():
        assert s["status"] == "completed"
        assert s["rows_in"] == s["rows_out"] + s["rows_quarantined"] + s["rows_deduplicated"]
    assert result["datasets"]["documents"]["rows"] == 0
    assert cat.query("SELECT status FROM runs").to_pylist() == [{"status": "completed"}]
    print({k: round(v["seconds"], 1) for k, v in stages.items()}, result["datasets"])
    assert "every input was quarantined" in result["note"]
