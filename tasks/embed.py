"""Embed: vectors for document texts, captions and images, one dataset per embedding space.

The model work runs on Ray Data actors that load their model once; results stream into the
work cache shard by shard, so only content never embedded in this space reaches a model and a
killed run resumes where it stopped. The published table is assembled from the cache.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import EmbedConfig, ImageEncoder, TextEncoder
from schemas.tables import embeddings_schema
from tasks.runtime.accounting import Quarantine, StageOutput
from tasks.runtime.cache import KEY, WorkCache
from tasks.runtime.ids import cache_key, fingerprint, text_sha256

log = logging.getLogger(__name__)

STAGE_TEXT = "embed_text"
STAGE_IMAGE = "embed_image"
TEXT_DATASET = "embeddings/text"
IMAGE_DATASET = "embeddings/image"


# ---- what to embed ---------------------------------------------------------------------------
def text_items(documents: pa.Table, captions: pa.Table | None = None) -> pa.Table:
    """Document texts and caption texts, each with the sha256 of the text it embeds."""
    docs = documents.filter(pc.is_valid(documents["text"]))
    parts = [pa.table({"item_id": docs["doc_id"], "item_kind": pa.array(["document"] * docs.num_rows, pa.string()),
                       "doc_id": docs["doc_id"], "text": docs["text"]})]
    if captions is not None and captions.num_rows:
        parts.append(pa.table({"item_id": captions["caption_id"],
                               "item_kind": pa.array(["caption"] * captions.num_rows, pa.string()),
                               "doc_id": captions["doc_id"], "text": captions["text"]}))
    items = pa.concat_tables(parts)
    return items.append_column("content_sha256", pa.array([text_sha256(t) for t in items["text"].to_pylist()],
                                                          pa.string()))


def image_items(documents: pa.Table) -> pa.Table:
    docs = documents.filter(pc.is_valid(documents["image_uri"]))
    return pa.table({"item_id": docs["doc_id"], "item_kind": pa.array(["image"] * docs.num_rows, pa.string()),
                     "doc_id": docs["doc_id"], "image_uri": docs["image_uri"],
                     "content_sha256": docs["image_sha256"]})


def text_fingerprint(cfg: TextEncoder) -> str:
    """Batch size does not change the vectors, so it is not part of the fingerprint."""
    return fingerprint(cfg.model_dump(exclude={"batch_size"}))


def image_fingerprint(cfg: ImageEncoder) -> str:
    return fingerprint(cfg.model_dump(exclude={"batch_size"}))


# ---- model work on Ray -----------------------------------------------------------------------
class TextEmbedActor:
    """A Ray Data actor: loads the text encoder once, embeds Arrow batches."""

    def __init__(self, cfg_json: str, device: str, threads: int | None):
        from tasks.backends.embedders import SentenceTransformerEmbedder, set_threads

        set_threads(threads)
        self.model = SentenceTransformerEmbedder(TextEncoder.model_validate_json(cfg_json), device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.model.embed(batch["text"].to_pylist())
        return pa.table({KEY: batch[KEY], "vector": _fixed(vectors)})


class ImageEmbedActor:
    """A Ray Data actor for the image encoder; an unreadable image gets a NULL vector."""

    def __init__(self, cfg_json: str, device: str, threads: int | None, corpus_root: str):
        from tasks.backends.embedders import ClipImageEmbedder, set_threads

        set_threads(threads)
        self.root = Path(corpus_root)
        self.model = ClipImageEmbedder(ImageEncoder.model_validate_json(cfg_json), device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from PIL import Image

        images, ok = [], []
        for uri in batch["image_uri"].to_pylist():
            try:
                with Image.open(self.root / uri) as im:
                    images.append(im.convert("RGB"))
                ok.append(True)
            except OSError:
                ok.append(False)
        vectors = self.model.embed_images(images)
        full = np.zeros((batch.num_rows, self.model.dim), np.float32)
        full[np.array(ok, bool)] = vectors
        arr = _fixed(full)
        mask = pa.array([not o for o in ok])
        return pa.table({KEY: batch[KEY], "vector": pc.if_else(mask, pa.nulls(len(ok), arr.type), arr)})


def _fixed(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])


def run_on_ray(todo: pa.Table, actor: type, ctor_kwargs: dict, cache: WorkCache, *, batch_size: int,
               actors: int, cpus_per_actor: float, num_gpus: float, flush_rows: int = 4096) -> int:
    """Stream `todo` through an actor pool into the cache; returns rows computed."""
    import ray.data
    from ray.data import ActorPoolStrategy

    chunks = [todo.slice(i, batch_size) for i in range(0, todo.num_rows, batch_size)]
    ds = ray.data.from_arrow(chunks).map_batches(
        actor, fn_constructor_kwargs=ctor_kwargs, compute=ActorPoolStrategy(size=actors),
        batch_size=batch_size, batch_format="pyarrow", num_cpus=cpus_per_actor, num_gpus=num_gpus or None,
        zero_copy_batch=True)
    pending, done = [], 0
    for out in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        pending.append(out)
        if sum(t.num_rows for t in pending) >= flush_rows:
            done += _flush(cache, pending)
    return done + _flush(cache, pending)


def embed_in_process(todo: pa.Table, cfg: EmbedConfig, cache: WorkCache, device: str) -> int:
    """Small jobs: the flow process's cached model, no actor-pool start-up."""
    from tasks.backends.embedders import local_text_embedder

    model = local_text_embedder(cfg.text.model_dump_json(), device)
    cache.append(pa.table({KEY: todo[KEY], "vector": _fixed(model.embed(todo["text"].to_pylist()))}))
    return todo.num_rows


def _flush(cache: WorkCache, pending: list[pa.Table]) -> int:
    if not pending:
        return 0
    table = pa.concat_tables(pending)
    cache.append(table)
    pending.clear()
    return table.num_rows


# ---- the stage -------------------------------------------------------------------------------
Compute = Callable[[pa.Table, WorkCache], int]


def embed_items(stage: str, items: pa.Table, space: str, stage_fp: str, cache: WorkCache,
                compute: Compute) -> StageOutput:
    """Embed what the cache lacks, then assemble the space's table from the cache.

    Items with identical content share one model call; an item whose vector could not be made
    (an unreadable image) is quarantined with the reason.
    """
    if items.num_rows == 0:
        return StageOutput(stage, {}, rows_in=0, rows_out=0,
                           notes={"space": space, "dim": 0, "table": _empty_embeddings(cache)}).check()
    keys = [cache_key(c, stage_fp) for c in items["content_sha256"].to_pylist()]
    items = items.append_column(KEY, pa.array(keys, pa.string()))
    unique_keys = pc.unique(items[KEY])
    cached, missing = cache.lookup(unique_keys)
    todo_mask = pc.is_in(items[KEY], value_set=pa.array(sorted(missing), pa.string()))
    todo = items.filter(todo_mask)
    first = pc.index_in(todo[KEY], value_set=pc.unique(todo[KEY]))
    _, first_rows = np.unique(first.to_numpy(), return_index=True)
    todo = todo.take(pa.array(first_rows)) if todo.num_rows else todo
    computed = compute(todo, cache) if todo.num_rows else 0
    still_missing: set[str] = set()
    if computed or missing:  # only new shards need a second read of the cache
        cached, still_missing = cache.lookup(unique_keys)
    if still_missing:
        raise RuntimeError(f"{stage}: {len(still_missing)} items were sent to the model but came back "
                           "without a vector; the actor pool lost work")
    idx = pc.index_in(items[KEY], value_set=cached[KEY])
    vectors = cached["vector"].take(idx)
    quarantine = Quarantine(stage)
    valid = pc.is_valid(vectors)
    for row in items.filter(pc.invert(valid)).select(["item_id", "doc_id"]).to_pylist():
        quarantine.add(row["item_id"], "no vector: the encoder could not read this item", row)
    keep = items.filter(valid)
    vectors = vectors.filter(valid)
    dim = cached.schema.field("vector").type.list_size if cached.num_rows else 0
    out = pa.table({
        "item_id": keep["item_id"], "item_kind": keep["item_kind"], "doc_id": keep["doc_id"],
        "content_sha256": keep["content_sha256"], "space": pa.array([space] * keep.num_rows, pa.string()),
        "vector": vectors.cast(pa.list_(pa.float32(), dim)),
    }, schema=embeddings_schema(dim))
    return StageOutput(stage, {}, rows_in=items.num_rows, rows_out=out.num_rows,
                       quarantine=quarantine.table(), model_calls=computed,
                       cache_hits=len(unique_keys) - len(missing),
                       notes={"space": space, "dim": dim, "table": out}).check()


def _empty_embeddings(cache: WorkCache) -> pa.Table:
    """No items: an empty table in the space's dimension when the cache knows it."""
    cached = cache.load()
    dim = cached.schema.field("vector").type.list_size if cached is not None else 1
    return embeddings_schema(dim).empty_table()


def embed_texts(documents: pa.Table, captions: pa.Table | None, cfg: EmbedConfig, cache_for: Callable[[str, str], WorkCache],
                num_gpus: float) -> StageOutput:
    from tasks.backends.embedders import text_space
    from tasks.runtime.ray_session import torch_device

    space, fp = text_space(cfg.text), text_fingerprint(cfg.text)
    cache = cache_for(STAGE_TEXT, fp)
    ray_batch = cfg.text.batch_size * 8

    def compute(todo: pa.Table, cache: WorkCache) -> int:
        if todo.num_rows < cfg.local_below:
            return embed_in_process(todo, cfg, cache, torch_device(num_gpus))
        return run_on_ray(todo.select([KEY, "text"]), TextEmbedActor,
                          {"cfg_json": cfg.text.model_dump_json(), "device": torch_device(num_gpus),
                           "threads": cfg.threads_per_actor},
                          cache, batch_size=ray_batch, actors=cfg.actors,
                          cpus_per_actor=cfg.cpus_per_actor, num_gpus=num_gpus)

    out = embed_items(STAGE_TEXT, text_items(documents, captions), space, fp, cache, compute)
    out.tables = {TEXT_DATASET: out.notes.pop("table")}
    return out


def embed_images(documents: pa.Table, cfg: EmbedConfig, corpus_root: Path,
                 cache_for: Callable[[str, str], WorkCache], num_gpus: float) -> StageOutput:
    from tasks.backends.embedders import image_space
    from tasks.runtime.ray_session import torch_device

    assert cfg.image is not None
    space, fp = image_space(cfg.image), image_fingerprint(cfg.image)
    cache = cache_for(STAGE_IMAGE, fp)

    def compute(todo: pa.Table, cache: WorkCache) -> int:
        return run_on_ray(todo.select([KEY, "image_uri"]), ImageEmbedActor,
                          {"cfg_json": cfg.image.model_dump_json(), "device": torch_device(num_gpus),
                           "threads": cfg.threads_per_actor, "corpus_root": str(corpus_root)},
                          cache, batch_size=cfg.image.batch_size, actors=cfg.actors,
                          cpus_per_actor=cfg.cpus_per_actor, num_gpus=num_gpus)

    out = embed_items(STAGE_IMAGE, image_items(documents), space, fp, cache, compute)
    out.tables = {IMAGE_DATASET: out.notes.pop("table")}
    return out


# ---- Prefect tasks ---------------------------------------------------------------------------
from tasks.runtime.context import RunContext, stage_clock  # noqa: E402
from tasks.runtime.prefect_support import run_logger, stage_task  # noqa: E402


def _cache_for(ctx: RunContext) -> Callable[[str, str], WorkCache]:
    return lambda stage, fp: WorkCache(ctx.root, stage, fp)


@stage_task("embed_text")
def embed_text_task(ctx: RunContext, documents, captions=None) -> dict:
    """Embed document texts (and captions, when the caption stage ran) in the text space."""
    from tasks.runtime.ray_session import gpus_for

    started_at, t0 = stage_clock()
    cfg = ctx.config.embed
    num_gpus = gpus_for(cfg.device, STAGE_TEXT)
    out = embed_texts(ctx.read(documents.name, documents.version),
                      ctx.read(captions.name, captions.version) if captions else None,
                      cfg, _cache_for(ctx), num_gpus)
    logger = run_logger()
    logger.info("embed_text: %d items, %d sent to the model, %d from cache", out.rows_in, out.model_calls,
                out.cache_hits)
    parents = [documents] + ([captions] if captions else [])
    results = ctx.record(out, parents=parents, fingerprint=text_fingerprint(cfg.text), started_at=started_at,
                         started=t0, logger=logger)
    return {name: r.dataset for name, r in results.items()}


@stage_task("embed_image")
def embed_image_task(ctx: RunContext, documents) -> dict:
    """Embed document images with the configured image encoder."""
    from tasks.runtime.ray_session import gpus_for

    started_at, t0 = stage_clock()
    cfg = ctx.config.embed
    num_gpus = gpus_for(cfg.device, STAGE_IMAGE)
    out = embed_images(ctx.read(documents.name, documents.version), cfg, ctx.config.corpus_root,
                       _cache_for(ctx), num_gpus)
    results = ctx.record(out, parents=[documents], fingerprint=image_fingerprint(cfg.image),
                         started_at=started_at, started=t0, logger=run_logger())
    return {name: r.dataset for name, r in results.items()}
