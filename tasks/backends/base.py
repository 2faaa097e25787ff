"""One interface per capability. Every backend records its identity as `name` (model@revision).

Backends are constructed inside Ray actors (they load their model once) or in-process for
small jobs; they never touch the catalog.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TextEmbedder(Protocol):
    name: str  # embedding space, model@revision
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...  # (n, dim) float32


@runtime_checkable
class ImageEmbedder(Protocol):
    name: str
    dim: int

    def embed_images(self, images: Sequence["PIL.Image.Image"]) -> np.ndarray: ...  # noqa: F821


@runtime_checkable
class Captioner(Protocol):
    name: str

    def caption(self, images: Sequence["PIL.Image.Image"], prompt: str | None = None) -> list[str]: ...  # noqa: F821


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(self, prompts: Sequence[str | list[dict]], max_new_tokens: int = 64) -> list[str]: ...


@runtime_checkable
class LabelScorer(Protocol):
    """Probabilities of label tokens at the answer position, one forward pass, no generation."""

    name: str

    def label_probabilities(self, prompts: Sequence[str | list[dict]], labels: Sequence[str]) -> np.ndarray: ...
