"""Caption stage: a caption for every image (image documents and images inside interleaved ones).

Existing alt-text is kept as its own caption (`source=alt_text`); a configured model adds a
`source=model` caption recording model@revision, prompt version and generation parameters.
Model work is cached by (image sha256 x captioner fingerprint), so only images never captioned
under the current captioner reach the model. An image the model fails on (exception, out of
memory, empty output) is quarantined with the error and the rest of the batch goes on.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import CaptionConfig
from schemas.tables import CAPTIONS
from tasks.backends.offline import ALT_TEXT
from tasks.backends.registry import CacheSink, backend_name
from tasks.prompts import load_prompt
from tasks.runtime.accounting import Quarantine, StageOutput
from tasks.runtime.cache import KEY, WorkCache
from tasks.runtime.ids import cache_key, fingerprint, record_id

log = logging.getLogger(__name__)

STAGE = "caption"
DATASET = "captions"
PROMPT = "caption"


def image_rows(documents: pa.Table) -> pa.Table:
    docs = documents.filter(pc.is_valid(documents["image_uri"]))
    return docs.select(["doc_id", "image_uri", "image_sha256", "alt_text"])


def caption_prompt(cfg: CaptionConfig) -> tuple[str | None, str | None]:
    """(prompt text, its sha); the offline backend uses no prompt."""
    if cfg.backend == "offline":
        return None, None
    return load_prompt(PROMPT, cfg.prompt_version)


def caption_params(cfg: CaptionConfig, prompt_sha: str | None) -> dict:
    return {"backend": cfg.backend, "model": cfg.model, "revision": cfg.revision, "dtype": cfg.dtype,
            "prompt_version": cfg.prompt_version, "prompt_sha256": prompt_sha,
            "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature}


def caption_fingerprint(cfg: CaptionConfig) -> str:
    """Model, revision, prompt (version and text) and generation parameters; not batch size or device."""
    return fingerprint(caption_params(cfg, caption_prompt(cfg)[1]))


# ---- model work on Ray -----------------------------------------------------------------------
RESULT = pa.schema([(KEY, pa.string()), ("text", pa.string()), ("captioner", pa.string()), ("error", pa.string())])


class CaptionActor:
    """A Ray Data actor: builds the captioner once, captions Arrow batches of (cache_key, image_uri)."""

    def __init__(self, cfg_json: str, device: str, corpus_root: str, prompt: str | None, threads: int | None):
        from tasks.backends.embedders import set_threads
        from tasks.backends.registry import build_captioner

        set_threads(threads)
        self.cfg = CaptionConfig.model_validate_json(cfg_json)
        self.root = Path(corpus_root)
        self.prompt = prompt
        self.backend = build_captioner(self.cfg, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return caption_batch(self.backend, batch, self.root, self.prompt, self.cfg.max_new_tokens)


def caption_batch(backend, batch: pa.Table, root: Path, prompt: str | None, max_new_tokens: int) -> pa.Table:
    """Caption one batch; unreadable images and failed or empty captions come back as errors."""
    from PIL import Image

    from tasks.backends.registry import caption_outcomes

    keys = batch[KEY].to_pylist()
    errors: dict[int, str] = {}
    images, where = [], []
    for i, uri in enumerate(batch["image_uri"].to_pylist()):
        try:
            with Image.open(root / uri) as im:
                images.append(im.convert("RGB"))
            where.append(i)
        except (OSError, ValueError) as e:
            errors[i] = f"image could not be read: {type(e).__name__}: {e}"
    texts: dict[int, str] = {}
    for i, o in zip(where, caption_outcomes(backend, images, prompt, max_new_tokens)):
        if not o.ok:
            errors[i] = f"captioning failed: {o.error}"
        elif not (o.value or "").strip():
            errors[i] = "captioning failed: the model returned an empty caption"
        else:
            texts[i] = o.value.strip()
    return pa.table({KEY: keys, "text": [texts.get(i) for i in range(len(keys))],
                     "captioner": [backend.name] * len(keys),
                     "error": [errors.get(i) for i in range(len(keys))]}, schema=RESULT)


Compute = Callable[[pa.Table, Callable[[pa.Table], None]], int]


def ray_compute(cfg: CaptionConfig, corpus_root: Path, prompt: str | None, num_gpus: float) -> Compute:
    from tasks.backends.registry import run_actor_pool
    from tasks.runtime.ray_session import torch_device

    def compute(todo: pa.Table, on_batch: Callable[[pa.Table], None]) -> int:
        return run_actor_pool(
            todo.select([KEY, "image_uri"]), CaptionActor,
            {"cfg_json": cfg.model_dump_json(), "device": torch_device(num_gpus) if cfg.backend == "hf" else "cpu",
             "corpus_root": str(corpus_root), "prompt": prompt, "threads": cfg.threads_per_actor},
            batch_size=cfg.batch_size, actors=cfg.actors, cpus_per_actor=cfg.cpus_per_actor,
            num_gpus=num_gpus, on_batch=on_batch)

    return compute


def local_compute(cfg: CaptionConfig, corpus_root: Path, prompt: str | None) -> Compute:
    """In the calling process: the `openai` backend holds no model, so it runs here on its own bounded
    thread pool, and its API key never travels to Ray workers."""
    from tasks.backends.registry import build_captioner

    def compute(todo: pa.Table, on_batch: Callable[[pa.Table], None]) -> int:
        backend = build_captioner(cfg, "cpu")
        try:
            for i in range(0, todo.num_rows, cfg.batch_size):
                on_batch(caption_batch(backend, todo.slice(i, cfg.batch_size), corpus_root, prompt,
                                       cfg.max_new_tokens))
        finally:
            getattr(backend, "close", lambda: None)()
        return todo.num_rows

    return compute


def compute_for(cfg: CaptionConfig, corpus_root: Path, num_gpus: float) -> Compute | None:
    """`hf` runs on Ray actors, `openai` in-process, `offline` needs no model work."""
    if cfg.backend == "offline":
        return None
    prompt = caption_prompt(cfg)[0]
    if cfg.backend == "openai":
        return local_compute(cfg, corpus_root, prompt)
    return ray_compute(cfg, corpus_root, prompt, num_gpus)


# ---- the stage -------------------------------------------------------------------------------
def caption_images(documents: pa.Table, cfg: CaptionConfig, cache: WorkCache | None,
                   compute: Compute | None) -> StageOutput:
    """Alt-text captions plus model captions for images the cache lacks; one row in per image."""
    images = image_rows(documents)
    quarantine = Quarantine(STAGE)
    rows: list[dict] = []
    for r in images.to_pylist():
        if r["alt_text"]:
            rows.append({"caption_id": record_id(ALT_TEXT, r["doc_id"], r["alt_text"]), "doc_id": r["doc_id"],
                         "image_sha256": r["image_sha256"], "text": r["alt_text"], "source": ALT_TEXT,
                         "captioner": ALT_TEXT, "prompt_version": None, "params": None})
    model_calls = cache_hits = 0
    failed: dict[str, str] = {}
    texts: dict[str, tuple[str, str]] = {}
    fp = None
    if cfg.backend != "offline":
        assert cache is not None and compute is not None
        prompt, prompt_sha = caption_prompt(cfg)
        fp = fingerprint(caption_params(cfg, prompt_sha))
        keys = [cache_key(s, fp) for s in images["image_sha256"].to_pylist()]
        images = images.append_column(KEY, pa.array(keys, pa.string()))
        unique = sorted(set(keys))
        _, missing = cache.lookup(unique)
        cache_hits = len(unique) - len(missing)
        todo = _first_per_key(images.filter(pc.is_in(images[KEY], value_set=pa.array(sorted(missing), pa.string()))))

        sink = CacheSink(cache, ["text", "captioner"])
        try:
            model_calls = compute(todo, sink) if todo.num_rows else 0
        finally:
            sink.flush()  # what finished survives a crash: the next run resumes from it
        failed = sink.failed
        cached, still_missing = cache.lookup(unique)
        lost = still_missing - set(failed)
        if lost:
            raise RuntimeError(f"{STAGE}: {len(lost)} images were sent to the captioner but came back without "
                               "a caption or an error; the actor pool lost work")
        if cached is not None:
            texts = {k: (t, c) for k, t, c in zip(cached[KEY].to_pylist(), cached["text"].to_pylist(),
                                                  cached["captioner"].to_pylist())}
        params = json.dumps({"prompt_sha256": prompt_sha, "max_new_tokens": cfg.max_new_tokens,
                             "temperature": cfg.temperature, "dtype": cfg.dtype}, sort_keys=True)
    captioned = 0
    for r in images.to_pylist():
        if cfg.backend == "offline":
            if r["alt_text"]:
                captioned += 1
            else:
                quarantine.add(r["doc_id"], "no caption: the image has no alt-text and caption.backend is offline "
                               "(configure a captioning model to caption it)", {"image_uri": r["image_uri"]})
            continue
        key = r[KEY]
        if key in texts:
            text, captioner = texts[key]
            rows.append({"caption_id": record_id("model", r["doc_id"], key), "doc_id": r["doc_id"],
                         "image_sha256": r["image_sha256"], "text": text, "source": "model",
                         "captioner": captioner, "prompt_version": cfg.prompt_version, "params": params})
            captioned += 1
        else:
            quarantine.add(r["doc_id"], failed.get(key, "captioning failed"),
                           {"image_uri": r["image_uri"], "image_sha256": r["image_sha256"]})
    table = pa.Table.from_pylist(rows, schema=CAPTIONS)
    return StageOutput(STAGE, {DATASET: table}, rows_in=images.num_rows, rows_out=captioned,
                       quarantine=quarantine.table(), model_calls=model_calls, cache_hits=cache_hits,
                       notes={"fingerprint": fp, "captions": table.num_rows}).check()


def _first_per_key(table: pa.Table) -> pa.Table:
    """One row per cache key: documents sharing an image share one model call."""
    seen, idx = set(), []
    for i, k in enumerate(table[KEY].to_pylist()):
        if k not in seen:
            seen.add(k)
            idx.append(i)
    return table.take(pa.array(idx, pa.int64()))


# ---- Prefect task ----------------------------------------------------------------------------
from tasks.runtime.context import RunContext, stage_clock  # noqa: E402
from tasks.runtime.prefect_support import run_logger, stage_task  # noqa: E402


@stage_task("caption")
def caption_task(ctx: RunContext, documents) -> dict:
    """Caption every image of `documents` and publish `captions`."""
    from tasks.runtime.ray_session import gpus_for

    started_at, t0 = stage_clock()
    cfg = ctx.config.caption
    if not cfg.enabled:
        return {}
    num_gpus = gpus_for(cfg.device, STAGE) if cfg.backend == "hf" else 0.0
    fp = caption_fingerprint(cfg)
    cache = WorkCache(ctx.root, STAGE, fp) if cfg.backend != "offline" else None
    compute = compute_for(cfg, ctx.config.corpus_root, num_gpus)
    out = caption_images(ctx.read(documents.name, documents.version), cfg, cache, compute)
    logger = run_logger()
    logger.info("caption (%s): %d images, %d sent to the model, %d from cache, %d quarantined",
                backend_name(cfg, ALT_TEXT), out.rows_in, out.model_calls, out.cache_hits, out.rows_quarantined)
    results = ctx.record(out, parents=[documents], fingerprint=fp, started_at=started_at, started=t0,
                         logger=logger)
    return {name: r.dataset for name, r in results.items()}
