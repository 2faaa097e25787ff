"""Model backends and the stages that generate with them: captions and synthetic queries."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.config.fields import Strict, resource, switch


class OpenAIEndpoint(Strict):
    """An OpenAI-compatible chat-completions server (vLLM, a hosted API). The key is never stored here."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="up to and including /v1")
    api_key_env: str | None = resource("OPENAI_API_KEY", description="environment variable that holds the API key")
    api_key_secret: str | None = resource(None, description="Prefect Secret block holding the key (when the env var is unset)")
    timeout_s: float = resource(60.0, gt=0)
    max_retries: int = resource(4, ge=0, description="retries on 429, 5xx, timeouts and malformed replies")
    backoff_s: float = resource(0.5, ge=0, description="first backoff; doubles per retry, with full jitter")
    max_backoff_s: float = resource(30.0, ge=0)
    concurrency: int = resource(8, ge=1, description="requests in flight at once")
    top_logprobs: int = Field(20, ge=1, le=20, description="label scoring reads the first token's top-k logprobs")


class ModelBackend(Strict):
    """Which model does a stage's work: `offline` (model-free baseline), `hf` (transformers) or `openai`."""

    backend: Literal["offline", "hf", "openai"] = "offline"
    model: str | None = Field(None, description="hf: HF id or local path; openai: the served model name")
    revision: str | None = Field(None, description="hf: commit/tag/branch; recorded with every output")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = resource("auto")
    batch_size: int = resource(8, gt=0, description="items per model call")
    actors: int = resource(1, ge=1, description="Ray actor-pool size; each actor loads the model once")
    cpus_per_actor: float = resource(1, gt=0)
    threads_per_actor: int | None = resource(None, ge=1, description="torch threads; default: all local cores")
    local_below: int = resource(0, ge=0, description="a job of fewer items runs in the flow process instead of "
                                "on a Ray actor pool (no pool start-up for small refresh deltas); 0 = always Ray")
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 is greedy decoding")
    trust_remote_code: bool = False
    openai: OpenAIEndpoint = OpenAIEndpoint()

    @model_validator(mode="after")
    def _model_named(self):
        if self.backend != "offline" and not self.model:
            raise ValueError(f"backend: {self.backend} needs `model` (an HF id or local path, or the served model name)")
        return self


class CaptionConfig(ModelBackend):
    """Captions for every image; `offline` keeps only the existing alt-text captions."""

    enabled: bool = switch(True)
    prompt_version: str = Field("v1", description="tasks/prompts/caption.<version>.txt")
    max_new_tokens: int = Field(40, gt=0)


QueryTarget = Literal["text", "image", "text+image"]


class QueryFilters(Strict):
    min_words: int = Field(3, ge=1)
    max_words: int = Field(32, ge=1)
    copy_ngram: int = Field(3, ge=1, description="n of the word n-grams compared with the source")
    max_copy_overlap: float = Field(0.5, ge=0, le=1, description="fail when more of the query's n-grams occur in the source")
    dedup_cosine: float = Field(0.95, gt=0, le=1, description="near-duplicate above this cosine, same document and target")
    roundtrip_k: int = Field(10, ge=1, description="the source document must be in the query's top-k over the corpus")


class QueriesConfig(ModelBackend):
    """Modality-targeted synthetic queries; `offline` is extractive (ICT-style cropping)."""

    enabled: bool = switch(True)
    targets: list[QueryTarget] = ["text", "image", "text+image"]
    per_target: int = Field(2, ge=1, le=20, description="queries per document and target")
    prompt_versions: dict[QueryTarget, str] = Field(
        default_factory=lambda: {"text": "v1", "image": "v1", "text+image": "v1"},
        description="tasks/prompts/queries_<target>.<version>.txt; bumping one regenerates only that target")
    prompts_dir: str | None = Field(None, description="a folder of your own prompt files (same names)")
    seed: int = Field(0, description="the offline generator's cropping is seeded per document")
    filters: QueryFilters = QueryFilters()
