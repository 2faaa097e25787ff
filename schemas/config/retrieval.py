"""Indexes, hard negatives and training exports."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from schemas.config.fields import Name, Strict, resource, switch
from schemas.config.runtime import TaskConfig, task_resources


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
    depth: int | None = Field(None, ge=1, description="retrieved per query; default range_max + max positives + 1, "
                                  "as sentence-transformers retrieves")
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
