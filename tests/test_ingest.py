"""Ingest on real files, good and bad: every quarantine reason, dedup, accounting, stable ids."""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from schemas.config import IngestConfig, Source, load_config
from tasks.ingest.stage import ingest_corpus
from tests.conftest import COCO, SAMPLE_CONFIG

GOOD_JPEG = next((COCO / "images" / "val2017").glob("*.jpg"))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR that claims a huge size, with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.fixture
def bad_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    img = root / "images"
    img.mkdir(parents=True)
    shutil.copy(GOOD_JPEG, img / "good.jpg")
    data = GOOD_JPEG.read_bytes()
    (img / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (img / "zero.jpg").write_bytes(b"")
    (img / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (img / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8), "red").save(img / "tiny.ppm")  # a real image, in a format we do not accept
    outside = tmp_path / "outside.jpg"
    shutil.copy(GOOD_JPEG, outside)
    os.symlink(outside, img / "link-out.jpg")
    manifest = root / "docs.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "A red bus parked by the station."}).encode(),
        json.dumps({"id": "a-copy", "text": "A red bus parked by the station."}).encode(),  # exact duplicate
        json.dumps({"id": "b", "text": "First version of b."}).encode(),
        json.dumps({"id": "b", "text": "A different text under the same id."}).encode(),
        json.dumps({"id": "blank", "text": " \n\t "}).encode(),
        b'{"id": "latin1", "text": "caf\xe9 au lait"}',  # invalid UTF-8
        b'{"id": "broken", "text": ',  # malformed JSON
        json.dumps({"id": "escape", "image": "../outside.jpg"}).encode(),
        json.dumps({"id": "absolute", "image": str(outside)}).encode(),
        json.dumps({"id": "gone", "image": "images/missing.jpg"}).encode(),
        json.dumps({"id": "pic", "text": "A photo with a caption.", "image": "images/good.jpg"}).encode(),
        json.dumps({"id": "nothing", "meta": {"x": 1}}).encode(),
    ]
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return root


def run(root: Path, sources: list[dict], **cfg):
    return ingest_corpus(root, [Source(**s) for s in sources], IngestConfig(**cfg))


def reasons(out) -> dict[str, str]:
    return {r["key"]: r["reason"] for r in out.quarantine.to_pylist()}


def test_every_bad_image_is_quarantined_with_its_reason(bad_corpus):
    out = run(bad_corpus, [{"kind": "image_folder", "path": "images"}], max_image_pixels=50_000_000)
    r = reasons(out)
    assert "corrupt or truncated image" in r["images/truncated.jpg"]
    assert "empty image file (0 bytes)" in r["images/zero.jpg"]
    assert "decompression-bomb cap" in r["images/bomb.png"] and "100000x100000" in r["images/bomb.png"]
    assert "unrecognised image format" in r["images/notes.txt"]
    assert "unsupported image format PPM" in r["images/tiny.ppm"]
    assert "escapes the corpus root" in r["images/link-out.jpg"] and "symlink" in r["images/link-out.jpg"]
    docs = out.table("documents")
    assert docs["image_uri"].to_pylist() == ["images/good.jpg"]
    assert docs["modality"].to_pylist() == ["image"]
    assert docs["image_width"][0].as_py() > 0
    assert out.rows_in == 7 == out.rows_out + out.rows_quarantined + out.rows_deduplicated


def test_manifest_problems_are_quarantined_and_duplicates_counted(bad_corpus):
    out = run(bad_corpus, [{"kind": "manifest", "path": "docs.jsonl"}])
    r = reasons(out)
    assert r["docs.jsonl:4"].startswith("duplicate id 'b' with different content")
    assert r["docs.jsonl:5"] == "empty or whitespace-only text"
    assert "invalid UTF-8" in r["docs.jsonl:6"]
    assert "malformed JSON" in r["docs.jsonl:7"]
    assert "'..' path '../outside.jpg'" in r["docs.jsonl:8"]
    assert "absolute path" in r["docs.jsonl:9"]
    assert r["docs.jsonl:10"] == "image file not found: images/missing.jpg"
    assert r["docs.jsonl:12"] == "record has neither text nor an image"
    assert out.rows_deduplicated == 1  # "a-copy" is the same content as "a"
    docs = {d["source_id"]: d for d in out.table("documents").to_pylist()}
    assert set(docs) == {"a", "b", "pic"}
    assert docs["pic"]["modality"] == "interleaved"
    assert docs["b"]["text"] == "First version of b."
    assert out.rows_in == 12 == out.rows_out + out.rows_quarantined + out.rows_deduplicated
    payload = json.loads(out.quarantine.filter(pa.compute.equal(out.quarantine["key"], "docs.jsonl:6"))["payload"][0].as_py())
    assert "caf" in payload["text"]  # the payload keeps what the user needs to find the record


def test_parquet_manifest_and_pil_bomb_guard(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "big.png").write_bytes(png_claiming(20_000, 20_000))
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["Parquet row one.", None], "image": [None, "big.png"]}),
                   root / "m.parquet")
    out = run(root, [{"kind": "manifest", "path": "m.parquet"}], max_image_pixels=1_000_000)
    assert out.rows_out == 1
    assert "decompression-bomb cap" in reasons(out)["m.parquet:row2"]


def test_ids_are_content_addresses_and_stable(bad_corpus, tmp_path):
    a = run(bad_corpus, [{"kind": "manifest", "path": "docs.jsonl"}]).table("documents")
    moved = tmp_path / "elsewhere"
    shutil.copytree(bad_corpus, moved, symlinks=True)
    b = run(moved, [{"kind": "manifest", "path": "docs.jsonl"}]).table("documents")
    assert sorted(a["doc_id"].to_pylist()) == sorted(b["doc_id"].to_pylist())
    assert all(len(i) == 32 for i in a["doc_id"].to_pylist())


def test_sample_corpus_mix_and_quarantine():
    cfg = load_config(SAMPLE_CONFIG)
    out = ingest_corpus(cfg.corpus_root, cfg.corpus.sources, cfg.ingest)
    docs = out.table("documents")
    modalities = docs["modality"].to_pylist()
    assert {m: modalities.count(m) for m in set(modalities)} == {"image": 8, "text": 10, "interleaved": 9}
    assert out.rows_quarantined == 3 and out.rows_deduplicated == 1
    size = sum(f.stat().st_size for f in cfg.corpus_root.rglob("*") if f.is_file())
    assert size < 10 * 1024 * 1024
    attribution = (cfg.corpus_root / "ATTRIBUTION.tsv").read_text().splitlines()
    assert len(attribution) == 25
    assert all(("Attribution License" in l or "Attribution-ShareAlike License" in l) for l in attribution[1:])
    coco_images = [d for d in docs.to_pylist() if d["image_uri"] and d["source"].startswith("coco_captions")]
    assert len(coco_images) == 16 and all(d["alt_text"] for d in coco_images)  # COCO images carry their first caption as alt-text
