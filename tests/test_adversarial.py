"""The adversarial corpus (tests/data/adversarial): every record-level defect in one manifest, a
broken COCO file and broken sources. Ingest gets through with exact counts, each record
quarantined with a readable reason, its file and its line or row."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.config import IngestConfig, Source
from tasks.ingest.stage import ingest_corpus
from tests.conftest import COCO

ADVERSARIAL = Path(__file__).parent / "data" / "adversarial"
GOOD_JPEG = next((COCO / "images" / "val2017").glob("*.jpg"))

SOURCES = [
    {"kind": "manifest", "path": "manifest.jsonl", "name": "manifest"},
    {"kind": "coco_captions", "path": "coco.json", "images": "images", "name": "coco"},
    {"kind": "coco_captions", "path": "not_json.json", "name": "not-json"},
    {"kind": "coco_captions", "path": "top_level_list.json", "name": "list-top"},
    {"kind": "manifest", "path": "CAPS.PARQUET", "name": "parquet"},
    {"kind": "manifest", "path": "../secret.txt", "name": "outside"},
]


def adversarial_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    shutil.copytree(ADVERSARIAL, root)
    (root / "images").mkdir()
    shutil.copy(GOOD_JPEG, root / "images" / "good.jpg")
    pq.write_table(pa.table({"id": pa.array([10, 11, 12], pa.int64()),
                             "text": pa.array([1, 2, 3], pa.int64()),
                             "image": pa.array([None, None, None], pa.string())}), root / "CAPS.PARQUET")
    (tmp_path / "secret.txt").write_text('{"text": "a host secret"}\n')
    return root


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = adversarial_corpus(tmp_path_factory.mktemp("adv"))
    return ingest_corpus(root, [Source(**s) for s in SOURCES], IngestConfig())


def reasons(out) -> dict[str, str]:
    return {r["key"]: r["reason"] for r in out.quarantine.to_pylist()}


def test_every_record_level_defect_is_quarantined_with_file_and_line(outcome):
    r = reasons(outcome)
    m = "manifest.jsonl"
    assert r[f"{m}:3"] == "image is a int, not a string"
    assert r[f"{m}:4"] == "text is a int, not a string"
    assert r[f"{m}:5"] == "text is a list, not a string"
    assert r[f"{m}:6"] == "image is a list, not a string"
    assert "lone surrogate" in r[f"{m}:7"]
    assert "nested deeper than" in r[f"{m}:8"]
    assert "malformed JSON" in r[f"{m}:9"] and "digits" in r[f"{m}:9"]
    assert r[f"{m}:10"] == "image path contains a NUL byte"
    assert "image path too long" in r[f"{m}:11"]
    assert r[f"{m}:12"] == "duplicate JSON key(s) 'text' in one object"
    assert r[f"{m}:13"] == "alt_text: empty or whitespace-only text"
    assert r[f"{m}:14"] == "alt_text: text is a int, not a string"
    assert r[f"{m}:15"] == "meta is a list, not a JSON object"
    assert r[f"{m}:16"] == "id is a list; an id is a string or an integer"
    assert r[f"{m}:18"] == "id '1' given both as a number and as a string; use one kind of id"
    assert "NaN is not valid JSON" in r[f"{m}:19"]
    assert r[f"{m}:20"] == "modality is a int, not a string"
    assert r[f"{m}:21"] == "manifest line is not a JSON object"


def test_coco_defects_name_the_file_and_the_entry(outcome):
    r = reasons(outcome)
    assert r["coco.json#images[1]"] == "COCO image 2 has no usable 'file_name' (got nothing)"
    assert r["coco.json#images[2]"] == "COCO image has no usable 'id' (got nothing)"
    assert r["coco.json#images[3]"] == "COCO image entry is a str, not an object"
    assert r["coco.json#annotations[1]"] == "COCO annotation of image 1 has no usable 'caption' (got nothing)"
    assert r["coco.json#annotations[2]"] == "COCO annotation has no usable 'image_id' (got nothing)"
    assert r["coco.json#annotations[3]"] == "COCO annotation of image 1 has no usable 'caption' (got nothing)"
    assert r["coco.json#annotations[4]"] == \
        "COCO annotation for image 99, which is not in 'images' (or was quarantined)"


def test_source_level_problems_fail_that_source_with_its_name(outcome):
    r = reasons(outcome)
    assert r["not_json.json"].startswith("source not-json: not_json.json is not COCO JSON: malformed JSON")
    assert r["top_level_list.json"].startswith("source list-top: top_level_list.json is not COCO JSON")
    assert r["../secret.txt"].startswith("source outside: path '../secret.txt' resolves outside the corpus root")
    assert "host secret" not in "".join(p or "" for p in outcome.quarantine["payload"].to_pylist())


def test_parquet_in_capitals_is_parquet_and_wrong_types_are_rows(outcome):
    r = reasons(outcome)
    assert [r[f"CAPS.PARQUET:row{i}"] for i in (1, 2, 3)] == ["text is a int, not a string"] * 3


def test_exact_counts(outcome):
    docs = outcome.table("documents")
    assert sorted(docs["source_id"].to_pylist()) == ["1", "coco:1", "good", "good-pic"]
    # manifest 21 lines, COCO 4 images + 5 annotations (one image good, one annotation used),
    # two broken COCO files, 3 Parquet rows, one source outside the root
    assert outcome.rows_in == 21 + 8 + 2 + 3 + 1
    assert outcome.rows_out == 4 and outcome.rows_deduplicated == 0
    assert outcome.rows_quarantined == outcome.rows_in - 4
