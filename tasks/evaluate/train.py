"""Fine-tuning one retriever on a sentence-transformers export: SentenceTransformerTrainer with
MultipleNegativesRankingLoss (or GISTEmbedLoss, guided by the base model) over (anchor, positive,
negative_1..k) rows, k = 0 for in-batch negatives only. The tuned model is saved under the models
folder with sentence-transformers' own model card, in a folder named after its weights, so one path
always means one set of weights."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from schemas.config import TrainConfig
from tasks.runtime.progress import trainer_progress
from tasks.runtime.stage import KEY

log = logging.getLogger(__name__)

TRAIN_FILE = "data/train-00000-of-00001.parquet"
WEIGHTS = "model.safetensors"
OUTPUTS = pa.schema([
    ("model_id", pa.string()), ("path", pa.string()), ("weights_sha256", pa.string()),
    ("hard_negatives", pa.int32()), ("train_pairs", pa.int64()), ("train_steps", pa.int32()),
    ("train_s", pa.float64()), ("loss", pa.float64()),
])


def _st():
    """The trainer API, under its sentence-transformers 6 module names or the older ones."""
    try:
        from sentence_transformers.sentence_transformer import losses
        from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    except ImportError:  # sentence-transformers 5
        from sentence_transformers import losses
        from sentence_transformers.training_args import BatchSamplers
    return losses, BatchSamplers


def make_loss(model, cfg: TrainConfig):
    """MNRL, or GISTEmbedLoss guided by a frozen copy of the untrained model (same scale: temperature
    1/scale); the copy is taken in memory, not loaded from disk a second time."""
    import copy

    losses, _ = _st()
    if cfg.loss == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, scale=cfg.scale)
    guide = copy.deepcopy(model).requires_grad_(False)
    return losses.GISTEmbedLoss(model, guide, temperature=1.0 / cfg.scale)


def training_rows(export: str | Path, hard_negatives: int | None):
    """The export's train split as a `datasets.Dataset` with anchor, positive and the first
    `hard_negatives` negative columns (all of them when None; none when 0)."""
    from datasets import load_dataset

    path = Path(export) / TRAIN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a sentence-transformers export folder")
    ds = load_dataset("parquet", data_files=str(path), split="train")
    negs = [c for c in ds.column_names if c.startswith("negative_")]
    keep = ["anchor", "positive"] + negs[:len(negs) if hard_negatives is None else hard_negatives]
    ds = ds.select_columns(keep)
    if len(ds) == 0:
        raise ValueError(f"the export {export} has no training rows (mine negatives, or lower "
                         "export.num_negatives so fewer tuples are left out)")
    return ds


def weights_sha256(folder: str | Path) -> str:
    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def interpolate(model, base: dict, tuned_weight: float) -> None:
    """WiSE-FT: every floating-point weight becomes tuned_weight x fine-tuned + (1 - tuned_weight) x
    base, in place (integer buffers such as position ids are the same in both and are kept)."""
    import torch

    state = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            if v.is_floating_point():
                v.mul_(tuned_weight).add_(base[k].to(v.device), alpha=1.0 - tuned_weight)


def fine_tune(export: str, variant: str, hard_negatives: bool, cfg: TrainConfig, models_dir: str, name: str,
              device: str = "cpu") -> dict:
    """Train one model; returns the OUTPUTS row (without the cache key)."""
    import torch
    from sentence_transformers import (SentenceTransformer, SentenceTransformerModelCardData,
                                       SentenceTransformerTrainer, SentenceTransformerTrainingArguments)

    from tasks.backends.embedders import resolve_model

    _, BatchSamplers = _st()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds = training_rows(export, cfg.num_negatives if hard_negatives else 0)
    path, base_name = resolve_model(cfg.model)
    card = SentenceTransformerModelCardData(
        language="en", model_name=f"{base_name} fine-tuned on {name} ({variant}) by corpusforge" + (
            f", {cfg.tuned_weight:g} fine-tuned / {1 - cfg.tuned_weight:g} base weights (WiSE-FT)"
            if cfg.tuned_weight < 1 else ""),
        train_datasets=[{"name": f"corpusforge export {Path(export).name}"}],
        tags=["corpusforge", variant] + (["wise-ft"] if cfg.tuned_weight < 1 else []),
        local_files_only=True, generate_widget_examples=False)
    model = SentenceTransformer(path, device=device, revision=cfg.revision, model_card_data=card,
                                local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    encode_length = model.max_seq_length
    model.max_seq_length = cfg.max_seq_length
    per_epoch = math.ceil(len(ds) / cfg.batch_size)
    steps = max(1, math.ceil(per_epoch * cfg.epochs))
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-train-", dir=models_dir))
    try:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(work / "checkpoints"), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
            seed=cfg.seed, data_seed=cfg.seed, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no",
            logging_steps=max(1, steps // 10), report_to="none", use_cpu=device == "cpu",
            dataloader_num_workers=0, disable_tqdm=True)  # our progress shows the steps
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                             loss=make_loss(model, cfg))
        _log_to_logger(trainer)
        trainer.add_callback(trainer_progress(f"train {variant}", name))
        base = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.tuned_weight < 1 else None
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        if base is not None:
            interpolate(model, base, cfg.tuned_weight)
        model.max_seq_length = encode_length  # encode with the base model's length, as the base is evaluated
        staged = work / "model"
        model.save(str(staged))
        sha = weights_sha256(staged)
        model_id = f"{name}-{variant}-{sha[:12]}"
        final = Path(models_dir) / model_id
        if final.exists():  # the same weights again: the folder already holds them
            shutil.rmtree(staged)
        else:
            staged.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n_neg = sum(c.startswith("negative_") for c in ds.column_names)
    log.info("trained %s: %d steps on %d rows (%d hard negatives each) in %.0fs, loss %.4f", model_id,
             result.global_step, len(ds), n_neg, seconds, result.training_loss)
    return {"model_id": model_id, "path": str(final.resolve()), "weights_sha256": sha, "hard_negatives": n_neg,
            "train_pairs": int(min(len(ds) * cfg.epochs, result.global_step * cfg.batch_size)), "train_steps": result.global_step,
            "train_s": seconds, "loss": float(result.training_loss)}


def _log_to_logger(trainer) -> None:
    """Training logs go to our logger, not to stdout (which is the command's output)."""
    from transformers.trainer_callback import PrinterCallback, TrainerCallback

    class ToLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                log.info("train step %d/%d: %s", state.global_step, state.max_steps,
                         ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()))

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ToLogger())


class TrainWork:
    """The train stage's work: one unit is one training set (an export and how many negatives to use)."""

    def __init__(self, args: dict, device: str = "cpu"):
        self.cfg = TrainConfig.model_validate(args["train"])
        self.models_dir, self.name, self.device = args["models_dir"], args["name"], device

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [fine_tune(u["export_path"], u["variant"], u["hard_negatives"], self.cfg, self.models_dir, self.name,
                          self.device) | {KEY: u[KEY]} for u in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=pa.schema([pa.field(KEY, pa.string())] + list(OUTPUTS)))
