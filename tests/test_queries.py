"""Query stage: targets per modality, caching, prompt-version bumps, LLM backends on Ray and over HTTP."""
from __future__ import annotations

import json
from collections import Counter
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from schemas.config import IngestConfig, Source, config_from_dict
from schemas.tables import QUERIES
from tasks.backends.offline import EXTRACTIVE
from tasks.caption import Caption
from tasks.corpus import document_text
from tasks.embed import EmbedText
from tasks.ingest.stage import ingest_corpus
from tasks.queries.stage import Queries, summary, summary_markdown
from tests.conftest import COCO
from tests.openai_stub import StubServer
from tests.stages import flat_index, run_pure


def synthesize(corpus, cache_dir, **queries):
    """The queries stage over the corpus tables, with the text index built from their embeddings."""
    root, docs, captions, index = corpus
    cfg = config_from_dict({"corpus": {"root": str(root), "sources": [{"kind": "manifest", "path": "x"}]},
                            "queries": queries})
    return run_pure(Queries(cfg), {"documents": docs, "captions": captions, "indexes/text": index}, cache_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Nine COCO images in the mixed layout (3 image-only, 3 caption-text-only, 3 interleaved) + one
    interleaved document without alt-text."""
    root = tmp_path_factory.mktemp("queries-corpus")
    data = json.loads((COCO / "annotations" / "captions_val2017.json").read_text())
    images = sorted(data["images"], key=lambda r: r["id"])[:9]
    keep = {i["id"] for i in images}
    (root / "images").mkdir()
    for im in images:
        shutil.copy(COCO / "images" / "val2017" / im["file_name"], root / "images" / im["file_name"])
    sub = {"images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in keep], "licenses": []}
    (root / "coco.json").write_text(json.dumps(sub))
    (root / "docs.jsonl").write_text(json.dumps({"id": "note", "image": f"images/{images[0]['file_name']}",
                                                 "text": "Riding in fog: slow down and use dipped headlights."}))
    sources = [Source(kind="coco_captions", path="coco.json", images="images", layout="mixed"),
               Source(kind="manifest", path="docs.jsonl")]
    docs = ingest_corpus(root, sources, IngestConfig()).table("documents")
    cfg = config_from_dict({"corpus": {"root": str(root), "sources": [s.model_dump() for s in sources]}})
    captions = run_pure(Caption(cfg), {"documents": docs}).table("captions")
    emb = run_pure(EmbedText(cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"local_below": 10**6})})),
                   {"documents": docs, "captions": captions}).table("embeddings/text")
    index = flat_index(pa.compute.list_flatten(emb["vector"]).to_numpy().reshape(emb.num_rows, -1),
                       emb["doc_id"].to_pylist())
    return root, docs, captions, index


def by(docs, modality):
    return set(docs.filter(pc.equal(docs["modality"], modality))["doc_id"].to_pylist())


def test_offline_queries_per_target_modality(corpus, tmp_path, minilm):
    root, docs, captions, _ = corpus
    out = synthesize(corpus, tmp_path, per_target=2)
    q = out.table("queries")
    assert q.schema == QUERIES
    text_docs, image_docs, inter = by(docs, "text"), by(docs, "image"), by(docs, "interleaved")
    assert (len(text_docs), len(image_docs), len(inter)) == (3, 3, 4)
    targets = {(r["doc_id"], r["target_modality"]) for r in q.to_pylist()}
    assert {d for d, t in targets if t == "text"} == text_docs | inter
    assert {d for d, t in targets if t == "image"} == image_docs | (inter - {docs["doc_id"][9].as_py()})
    assert {d for d, t in targets if t == "text+image"} == inter - {docs["doc_id"][9].as_py()}
    # the interleaved note has no alt-text: its image targets are quarantined, with the reason
    assert out.rows_quarantined == 2 and all("no caption" in r for r in out.quarantine["reason"].to_pylist())
    # generation of every unit plus one embedding per query, for the filters
    assert out.rows_in == 3 + 3 + 4 * 3 and out.rows_out == out.rows_in - 2
    assert out.model_calls == out.rows_out + len(set(q["text"].to_pylist()))
    assert set(q["generator"].to_pylist()) == {EXTRACTIVE}
    # up to per_target queries per (document, target); a short text with fewer distinct crops gives fewer
    per_unit = Counter((r["doc_id"], r["target_modality"]) for r in q.to_pylist())
    assert len(per_unit) == out.rows_out and set(per_unit.values()) <= {1, 2} and q.num_rows > out.rows_out
    assert len(set(q["query_id"].to_pylist())) == q.num_rows
    assert pc.all(pc.is_valid(q["passed"])).as_py() and pc.sum(q["passed"]).as_py() >= 0.6 * q.num_rows
    image_rows = q.filter(pc.equal(q["target_modality"], "image")).to_pylist()
    cap_text = dict(zip(captions["doc_id"].to_pylist(), captions["text"].to_pylist()))
    assert all(r["source_text"] == document_text(None, [cap_text[r["doc_id"]]]) for r in image_rows)
    md = summary_markdown(summary(q))
    assert "| text+image |" in md and md.count("\n| image |") + md.count("\n| text |") >= 2


def test_second_run_generates_nothing_and_a_prompt_bump_regenerates_only_that_target(corpus, tmp_path, minilm):
    first = synthesize(corpus, tmp_path, per_target=2)
    again = synthesize(corpus, tmp_path, per_target=2)
    n_texts = len(set(first.table("queries")["text"].to_pylist()))
    assert again.model_calls == 0 and again.cache_hits == first.rows_out + n_texts  # units and query vectors
    assert again.table("queries").equals(first.table("queries"))

    third = synthesize(corpus, tmp_path, per_target=2, prompt_versions={"text": "v2", "image": "v1", "text+image": "v1"})
    q1, q3 = first.table("queries"), third.table("queries")
    n_text_units = len({d for d, t in zip(q1["doc_id"].to_pylist(), q1["target_modality"].to_pylist()) if t == "text"})
    new_texts = len(set(q3["text"].to_pylist()) - set(q1["text"].to_pylist()))
    assert third.model_calls == n_text_units + new_texts
    assert third.cache_hits == first.rows_out - n_text_units + len(set(q3["text"].to_pylist())) - new_texts

    def ids(t, target):
        return set(t.filter(pc.equal(t["target_modality"], target))["query_id"].to_pylist())

    assert ids(q3, "image") == ids(q1, "image") and ids(q3, "text+image") == ids(q1, "text+image")
    assert ids(q3, "text").isdisjoint(ids(q1, "text"))
    assert set(q3.filter(pc.equal(q3["target_modality"], "text"))["prompt_version"].to_pylist()) == {"v2"}


def test_hf_generator_through_ray_actors(corpus, tiny_causal_lm, ray_local, tmp_path, minilm):
    hf = dict(backend="hf", model=tiny_causal_lm, per_target=2, max_new_tokens=24, batch_size=4,
              targets=["text", "image"])
    out = synthesize(corpus, tmp_path, **hf)
    q = out.table("queries")
    assert out.rows_in == 7 + 7 and out.model_calls == 14 - 1 + len(set(q["text"].to_pylist()))
    assert out.rows_out + out.rows_quarantined == out.rows_in
    assert out.rows_out > 0 and q.num_rows >= out.rows_out
    assert set(q["generator"].to_pylist()) == {f"{tiny_causal_lm}@local"}
    assert set(q["prompt_version"].to_pylist()) == {"v1"}
    reasons = [r for r in out.quarantine["reason"].to_pylist() if not r.startswith("no caption")]
    assert all(r.startswith("no query could be parsed") for r in reasons)
    again = synthesize(corpus, tmp_path, **hf)
    new = set(again.table("queries")["text"].to_pylist()) - set(q["text"].to_pylist())
    assert again.model_calls == len(reasons) + len(new)  # only units that failed before are retried


def test_openai_generator_quarantines_failed_units(corpus, tmp_path, minilm, monkeypatch):
    root, docs, captions, index = corpus
    bad = pa.table({"doc_id": ["bad-doc"], "source_id": ["bad"], "modality": ["text"],
                    "text": ["ALWAYS500 this document breaks the server"], "source": ["test"]})
    docs = pa.concat_tables([docs, bad], promote_options="default").cast(docs.schema)
    key = "sk-queries-key-31337"
    monkeypatch.setenv("CF_QUERIES_KEY", key)
    with StubServer(api_key=key) as server:
        out = synthesize((root, docs, None, index), tmp_path, backend="openai", model="stub-llm", per_target=2,
                         targets=["text"], openai={"base_url": server.base_url, "api_key_env": "CF_QUERIES_KEY",
                                                   "max_retries": 1, "backoff_s": 0.01})
    q = out.table("queries")
    assert out.rows_quarantined == 1 and out.quarantine["key"][0].as_py() == "bad-doc/text"
    assert "HTTP 500" in out.quarantine["reason"][0].as_py()
    assert q.num_rows == 2 * 7 and set(q["generator"].to_pylist()) == {"stub-llm@api"}
    assert all(t.startswith("echo: You write search queries") or "Document text" in t or t
               for t in q["text"].to_pylist())
    blob = json.dumps(out.quarantine.to_pylist()) + json.dumps(q.to_pylist())
    assert key not in blob
