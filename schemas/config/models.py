"""Encoders of the embed stage."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.config.fields import MINILM, Strict, resource


class TextEncoder(Strict):
    model: str = MINILM
    revision: str | None = None
    batch_size: int = resource(64, gt=0)
    normalize: bool = True
    max_seq_length: int | None = None


class ImageEncoder(Strict):
    model: str = Field(..., description="HF id or local path of a CLIP-style model")
    revision: str | None = None
    batch_size: int = resource(16, gt=0)


class EmbedConfig(Strict):
    text: TextEncoder = TextEncoder()
    image: ImageEncoder | None = None
    actors: int = resource(1, ge=1, description="Ray actor-pool size; each actor loads the model once")
    cpus_per_actor: float = resource(1, gt=0)
    threads_per_actor: int | None = resource(None, ge=1, description="torch threads; default: all local cores")
    device: Literal["auto", "cpu", "cuda"] = resource("auto")
    local_below: int = resource(
        0, ge=0,
        description="a job of fewer items runs in the flow process with a cached model instead of "
                    "starting an actor pool (worth it for small scheduled refresh deltas); 0 = always Ray")
