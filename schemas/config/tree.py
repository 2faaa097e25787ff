"""LATTICE semantic trees and their search."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.config.backends import ModelBackend
from schemas.config.fields import Name, Strict, switch
from schemas.config.runtime import TaskConfig, task_resources


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
