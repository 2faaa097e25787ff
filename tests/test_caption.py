"""Caption stage: alt-text captions, model captions through real Ray actors, per-item quarantine, caching."""
from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest
from PIL import Image

from schemas.config import IngestConfig, Source, config_from_dict
from schemas.tables import CAPTIONS
from tasks.caption import Caption
from tasks.ingest.stage import ingest_corpus
from tasks.runtime.cache import WorkCache
from tasks.runtime.storage import DataRoot
from tests.conftest import COCO
from tests.openai_stub import StubServer
from tests.stages import run_pure


def stage(root, **caption) -> Caption:
    return Caption(config_from_dict({"corpus": {"root": str(root), "sources": [{"kind": "manifest", "path": "x"}]},
                                     "caption": caption}))

COCO_IMAGES = sorted((COCO / "images" / "val2017").glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four COCO images (one shared by two documents, two with alt-text) plus two synthetic ones."""
    root = tmp_path_factory.mktemp("caption-corpus")
    (root / "images").mkdir()
    for p in COCO_IMAGES:
        shutil.copy(p, root / "images" / p.name)
    Image.new("RGB", (13, 20), "red").save(root / "images" / "w13.png")
    Image.new("RGB", (17, 20), "blue").save(root / "images" / "w17.png")
    rows = [{"id": f"img{i}", "image": f"images/{p.name}", **({"alt_text": f"alt text {i}"} if i < 2 else {})}
            for i, p in enumerate(COCO_IMAGES)]
    rows += [{"id": "shared", "text": "a document that shows the first image again", "image": rows[0]["image"]},
             {"id": "w13", "image": "images/w13.png"}, {"id": "w17", "image": "images/w17.png"},
             {"id": "plain", "text": "a text-only document"}]
    (root / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = ingest_corpus(root, [Source(kind="manifest", path="docs.jsonl")], IngestConfig()).table("documents")
    assert docs.num_rows == 8
    return root, docs


def test_offline_keeps_alt_text_and_quarantines_images_without_any_caption(corpus):
    root, docs = corpus
    out = run_pure(stage(root), {"documents": docs})
    caps = out.table("captions")
    assert caps.schema == CAPTIONS
    assert sorted(caps["text"].to_pylist()) == ["alt text 0", "alt text 1"]
    assert set(caps["source"].to_pylist()) == {"alt_text"} and set(caps["captioner"].to_pylist()) == {"alt_text"}
    assert (out.rows_in, out.rows_out, out.rows_quarantined) == (7, 2, 5)
    assert all("no alt-text" in r for r in out.quarantine["reason"].to_pylist())


def test_hf_captioner_on_ray_actors_records_provenance_and_caches(corpus, tiny_captioner, ray_local, tmp_path):
    root, docs = corpus
    st = stage(root, backend="hf", model=tiny_captioner, batch_size=2, actors=1, max_new_tokens=6)
    out = run_pure(st, {"documents": docs}, tmp_path)
    caps = out.table("captions")
    model = caps.filter(pa.compute.equal(caps["source"], "model")).to_pylist()
    assert len(model) == 7 and out.model_calls == 6  # the shared image is captioned once
    assert all(r["captioner"] == f"{tiny_captioner}@local" and r["prompt_version"] == "v1" for r in model)
    assert all(json.loads(r["params"])["max_new_tokens"] == 6 for r in model)
    assert len(caps.filter(pa.compute.equal(caps["source"], "alt_text"))) == 2
    assert len({r["caption_id"] for r in caps.to_pylist()}) == caps.num_rows

    again = run_pure(st, {"documents": docs}, tmp_path)
    assert again.model_calls == 0 and again.cache_hits == 6
    assert again.table("captions").sort_by("caption_id").equals(caps.sort_by("caption_id"))

    bumped = stage(root, backend="hf", model=tiny_captioner, batch_size=2, actors=1, max_new_tokens=5,
                   local_below=1000)
    assert bumped.fingerprint() != st.fingerprint()
    assert run_pure(bumped, {"documents": docs}, tmp_path).model_calls == 6  # in-process, same model


def test_failed_and_empty_captions_are_quarantined_and_the_batch_goes_on(corpus, tmp_path, monkeypatch):
    root, docs = corpus
    monkeypatch.setenv("CF_CAPTION_KEY", "sk-caption-key-0000")
    with StubServer(api_key="sk-caption-key-0000") as server:
        st = stage(root, backend="openai", model="stub-vlm", batch_size=8,
                   openai={"base_url": server.base_url, "api_key_env": "CF_CAPTION_KEY", "max_retries": 1,
                           "backoff_s": 0.01, "timeout_s": 5})
        out = run_pure(st, {"documents": docs}, tmp_path)
        cache = WorkCache(DataRoot(str(tmp_path)), "caption", st.work_fingerprint())
    reasons = dict(zip(out.quarantine["key"].to_pylist(), out.quarantine["reason"].to_pylist()))
    ids = dict(zip(docs["source_id"].to_pylist(), docs["doc_id"].to_pylist()))
    assert "HTTP 500" in reasons[ids["w13"]] and "empty caption" in reasons[ids["w17"]]
    assert out.rows_out == 5 and out.rows_quarantined == 2
    assert all(c.startswith("an image of") for c in out.table("captions").filter(
        pa.compute.equal(out.table("captions")["source"], "model"))["text"].to_pylist())
    assert all("sk-caption-key" not in r for r in reasons.values())
    assert cache.load().num_rows == 4  # 4 distinct good images; failures are not cached: the next run retries them
