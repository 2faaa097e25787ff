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


def _manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_ingest_streams_chunks_and_a_refresh_rechecks_only_the_changed_ones(tmp_path):
    """Chunks of `chunk_records` records: an unchanged chunk is carried over unchecked, a changed
    one is re-checked and upserted, and the documents no chunk gives any more become deletions."""
    from schemas.config import config_from_dict
    from tasks.ingest.stage import Ingest
    from tasks.runtime import versions
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.publish import read
    from tests.stages import run_one

    root = tmp_path / "corpus"
    root.mkdir()
    rows = [{"id": f"d{i}", "text": f"Note {i}: the harbour crane lifts container {i}."} for i in range(12)]
    _manifest(root / "docs.jsonl", rows[:10])
    cfg = config_from_dict({"name": "chunks", "workdir": str(tmp_path / "work"), "ingest": {"chunk_records": 4},
                            "corpus": {"root": str(root), "sources": [{"kind": "manifest", "path": "docs.jsonl"}]}})
    refs, first = run_one(cfg, Ingest(cfg))
    assert refs["documents"].row_count == 10
    assert (first["notes"]["chunks"], first["notes"]["chunks_carried"]) == (3, 0)

    # two lines more, one of them a duplicate text under a new id and one clashing with an old id
    _manifest(root / "docs.jsonl", rows[:10] + [rows[10], {"id": "d-copy", "text": rows[1]["text"]},
                                               {"id": "d2", "text": "Another text claiming the id d2."}])
    refs, second = run_one(cfg, Ingest(cfg))
    assert (second["notes"]["chunks"], second["notes"]["chunks_carried"]) == (4, 2)  # the first 8 lines
    assert refs["documents"].row_count == 11
    stage = Catalog(cfg.catalog_path).query("SELECT * FROM stage_runs ORDER BY started_at DESC LIMIT 1").to_pylist()[0]
    assert (stage["rows_in"], stage["cache_hits"]) == (13, 8)
    assert (stage["rows_out"], stage["rows_deduplicated"], stage["rows_quarantined"]) == (11, 1, 1)
    reasons = Catalog(cfg.catalog_path).query("SELECT reason FROM quarantine WHERE key LIKE 'docs.jsonl:13'")
    assert "duplicate id 'd2'" in reasons.column(0)[0].as_py()  # d2 lives in a carried chunk
    lance = versions.open_dataset(str(tmp_path / "work" / "data" / "documents.lance"))
    assert lance.versions()[-1]["version"] > 1

    # the last lines go: their documents are deleted, the carried chunks are untouched
    _manifest(root / "docs.jsonl", rows[:9])
    refs, third = run_one(cfg, Ingest(cfg))
    docs = read(Catalog(cfg.catalog_path), Catalog(cfg.catalog_path).data_root(), "documents")
    assert sorted(docs["source_id"].to_pylist()) == sorted(f"d{i}" for i in range(9))
    assert third["notes"]["chunks_carried"] == 2 and third["notes"]["deleted"] == 2

    # no change: nothing re-checked, nothing published
    again, fourth = run_one(cfg, Ingest(cfg))
    assert again["documents"].version == refs["documents"].version and fourth["notes"]["chunks_carried"] == 3


def test_a_refresh_does_not_read_an_unchanged_manifest_again(tmp_path):
    """A text manifest with the size, mtime and inode of the last build is not read: its chunks
    carry over. Any change of its stat (an edit, a touch) has it read and hashed again."""
    import os

    from schemas.config import config_from_dict
    from tasks.ingest.stage import Ingest
    from tests.stages import run_one

    root = tmp_path / "corpus"
    root.mkdir()
    rows = [{"id": f"d{i}", "text": f"Note {i}: the tide table for pier {i}."} for i in range(10)]
    _manifest(root / "old.jsonl", rows[:6])
    _manifest(root / "new.jsonl", rows[6:8])
    cfg = config_from_dict({"name": "stat", "workdir": str(tmp_path / "work"), "ingest": {"chunk_records": 4},
                            "corpus": {"root": str(root), "sources": [{"kind": "manifest", "path": "old.jsonl"},
                                                                      {"kind": "manifest", "path": "new.jsonl"}]}})
    refs, first = run_one(cfg, Ingest(cfg))
    assert refs["documents"].row_count == 8 and first["notes"]["files_unread"] == 0

    _manifest(root / "new.jsonl", rows[6:10])
    refs, second = run_one(cfg, Ingest(cfg))
    assert refs["documents"].row_count == 10
    assert second["notes"]["files_unread"] == 1 and second["notes"]["chunks_carried"] == 2  # old.jsonl's two

    # the same bytes with a new mtime: read again, and its chunks still carry over by their hash
    st = os.stat(root / "old.jsonl")
    os.utime(root / "old.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again, third = run_one(cfg, Ingest(cfg))
    assert third["notes"]["files_unread"] == 1 and third["notes"]["chunks_carried"] == 3  # new.jsonl is unread now
    assert again["documents"].version == refs["documents"].version

    # an edit of the same size: read again and re-checked
    text = (root / "old.jsonl").read_text().replace("tide table", "tide chart")
    (root / "old.jsonl").write_text(text)
    os.utime(root / "old.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    edited, fourth = run_one(cfg, Ingest(cfg))
    assert fourth["notes"]["files_unread"] == 1 and fourth["notes"]["chunks_carried"] == 1
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.publish import read

    texts = read(Catalog(cfg.catalog_path), Catalog(cfg.catalog_path).data_root(), "documents")["text"].to_pylist()
    assert sum("tide chart" in t for t in texts) == 6 and edited["documents"].row_count == 10
