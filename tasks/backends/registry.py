"""Build a backend from a config section, and get per-item outcomes from it.

Stages never construct backends themselves: a Ray actor calls `build_generator` /
`build_captioner` once in its constructor, so each actor loads its model once. A failure on one
item (an exception, out of memory, an empty answer) becomes that item's error outcome and the
rest of the batch goes on.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence


from schemas.config import ModelBackend
from tasks.backends.openai_compat import Outcome

log = logging.getLogger(__name__)


def backend_name(cfg: ModelBackend, offline_name: str) -> str:
    """The name recorded with outputs, known before any model is loaded (fingerprints use it)."""
    if cfg.backend == "offline":
        return offline_name
    if cfg.backend == "openai":
        return f"{cfg.model}@{cfg.revision or 'api'}"
    rev = cfg.revision or ("local" if os.path.isdir(cfg.model) else "main")
    return f"{cfg.model.rstrip('/')}@{rev}"


def _openai(cfg: ModelBackend):
    from tasks.backends.openai_compat import OpenAICompatClient

    o = cfg.openai
    return OpenAICompatClient(o.base_url, cfg.model, revision=cfg.revision, api_key_env=o.api_key_env,
                              api_key_secret=o.api_key_secret, timeout_s=o.timeout_s, max_retries=o.max_retries,
                              backoff_s=o.backoff_s, max_backoff_s=o.max_backoff_s, concurrency=o.concurrency,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_logprobs=o.top_logprobs)


def _build(cfg: ModelBackend, device: str, hf_class: str, offline: str):
    if cfg.backend == "hf":
        from tasks.backends import hf

        return getattr(hf, hf_class)(cfg.model, cfg.revision, dtype=cfg.dtype, device=device,
                                     batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, trust_remote_code=cfg.trust_remote_code)
    if cfg.backend == "openai":
        return _openai(cfg)
    raise ValueError(offline)


def build_generator(cfg: ModelBackend, device: str = "auto"):
    """A Generator (and LabelScorer) for an `hf` or `openai` section."""
    return _build(cfg, device, "HFCausalLM",
                  "the offline backend has no text generator; its stages use their model-free baselines")


def build_label_scorer(cfg: ModelBackend, device: str = "auto"):
    return build_generator(cfg, device)


def build_captioner(cfg: ModelBackend, device: str = "auto"):
    return _build(cfg, device, "HFCaptioner", "the offline backend has no image captioner; captions come from alt-text")


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:1000]


def outcomes(call: Callable[[list], list], items: Sequence) -> list[Outcome]:
    """Run `call` on the whole batch; when it raises, retry item by item so only the bad ones fail."""
    items = list(items)
    if not items:
        return []
    try:
        values = call(items)
        return [Outcome(v, attempts=1) for v in values]
    except Exception as e:  # noqa: BLE001 - any model failure is an item outcome, never a crashed batch
        if len(items) == 1:
            return [Outcome(error=_error(e), attempts=1)]
        _free_cuda()
        log.warning("batch of %d failed (%s); retrying item by item", len(items), _error(e)[:200])
    result = []
    for it in items:
        try:
            result.append(Outcome(call([it])[0], attempts=2))
        except Exception as e:  # noqa: BLE001
            _free_cuda()
            result.append(Outcome(error=_error(e), attempts=2))
    return result


def generate_outcomes(backend, prompts: Sequence, max_new_tokens: int | None = None) -> list[Outcome]:
    if hasattr(backend, "generate_outcomes"):
        return backend.generate_outcomes(prompts, max_new_tokens)
    return outcomes(lambda p: backend.generate(p, max_new_tokens), prompts)


def caption_outcomes(backend, images: Sequence, prompt: str | None = None,
                     max_new_tokens: int | None = None) -> list[Outcome]:
    if hasattr(backend, "caption_outcomes"):
        return backend.caption_outcomes(images, prompt, max_new_tokens)
    return outcomes(lambda ims: backend.caption(ims, prompt, max_new_tokens), images)


def _free_cuda() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort after an OOM
        pass
