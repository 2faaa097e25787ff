"""Slate scorers for tree search: one call scores a listwise slate of candidates from 0 to 100.

- `EmbeddingScorer`: offline; the cosine of the query embedding with each candidate's vector
  (a node's summary embedding, a leaf's document embedding), as 100·max(cos, 0).
- `LLMListwiseScorer`: a Generator reads the query and the numbered candidates and answers
  JSON `{"scores": {"0": 85, ...}}`. An answer that does not parse is counted and the slate is
  returned as missing (None); a candidate the answer leaves out or scores outside 0–100 is
  missing too. Nothing is ever turned into a made-up score.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from tasks.tree import prompts
from tasks.tree.summarize import _json_object

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    node: int
    text: str
    is_leaf: bool
    vector: np.ndarray


SlateScores = list  # list[float | None] aligned with the slate, or None for a failed slate


class SlateScorer(Protocol):
    name: str
    stats: dict

    def score_slates(self, query: str, slates: Sequence[Sequence[Candidate]]) -> list[SlateScores | None]: ...


@dataclass
class EmbeddingScorer:
    embed: Callable[[Sequence[str]], np.ndarray]
    name: str = "embedding"
    stats: dict = field(default_factory=lambda: {"calls": 0, "parse_failures": 0, "missing_scores": 0})
    _cache: dict = field(default_factory=dict)

    def query_vector(self, query: str) -> np.ndarray:
        if query not in self._cache:
            v = np.asarray(self.embed([query])[0], np.float32)
            self._cache[query] = v / max(float(np.linalg.norm(v)), 1e-12)
        return self._cache[query]

    def score_slates(self, query, slates):
        q = self.query_vector(query)
        out = []
        for slate in slates:
            self.stats["calls"] += 1
            vecs = np.stack([c.vector for c in slate]) if slate else np.zeros((0, len(q)), np.float32)
            norms = np.maximum(np.linalg.norm(vecs, axis=1), 1e-12)
            out.append([float(x) for x in 100.0 * np.clip(vecs @ q / norms, 0.0, 1.0)])
        return out


def parse_scores(raw: str, n: int) -> SlateScores | None:
    """Scores for candidates 0..n-1 from an answer; None when nothing usable parses."""
    obj = _json_object(raw or "")
    if obj is None:
        return None
    scores = obj.get("scores", obj.get("relevance_scores"))
    if isinstance(scores, list):
        scores = {str(i): x for i, x in enumerate(scores)}
    if not isinstance(scores, dict):
        return None
    out: list[float | None] = [None] * n
    for k, v in scores.items():
        try:
            i, x = int(str(k).strip().strip("[]")), float(v)
        except (TypeError, ValueError):
            continue
        if 0 <= i < n and 0.0 <= x <= 100.0:
            out[i] = x
    return out if any(x is not None for x in out) else None


@dataclass
class LLMListwiseScorer:
    generator: object  # tasks.backends.base.Generator
    max_new_tokens: int = 160
    candidate_chars: int = 400
    stats: dict = field(default_factory=lambda: {"calls": 0, "parse_failures": 0, "missing_scores": 0})

    @property
    def name(self) -> str:
        return f"{self.generator.name}#{prompts.version('score')}"

    def prompt(self, query: str, slate: Sequence[Candidate]) -> str:
        lines = "\n".join(f"[{i}] {'(passage) ' if c.is_leaf else '(topic) '}{' '.join(c.text.split())[: self.candidate_chars]}"
                          for i, c in enumerate(slate))
        return prompts.render("score", query=" ".join(query.split()), candidates=lines)

    def score_slates(self, query, slates):
        if not slates:
            return []
        self.stats["calls"] += len(slates)
        try:
            raws = self.generator.generate([prompts.as_chat(self.prompt(query, s)) for s in slates],
                                           max_new_tokens=self.max_new_tokens)
        except Exception as e:  # noqa: BLE001 - a failing backend is a missing slate, never fatal
            log.warning("tree search: the scorer failed (%s); %d slates are missing", e, len(slates))
            raws = [""] * len(slates)
        out = []
        for slate, raw in zip(slates, raws):
            parsed = parse_scores(raw if isinstance(raw, str) else "", len(slate))
            if parsed is None:
                self.stats["parse_failures"] += 1
            else:
                self.stats["missing_scores"] += sum(x is None for x in parsed)
            out.append(parsed)
        return out
