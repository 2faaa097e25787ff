"""The policies, applied in order to one batch of candidates; each counts what it removed.

Margins anchor on the query's minimum positive score s+ (absolute: score <= s+ - m; relative:
score <= s+ - |s+|*r, right for negative scores too), then max/min score, the UniME-V2 judge
filter, the MM-Embed modality classes, the rank window and sampling.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from schemas.config import NegativesConfig
from tasks.negatives.plan import MiningPlan
from tasks.negatives.retrieve import Candidates


@dataclass
class Batch:
    """Everything the policies look at for one batch of queries."""

    cands: Candidates
    positives: list[np.ndarray]  # per query: positions of its positives in the universe (-1: not indexed)
    pos_min: np.ndarray  # float32 [B]: minimum positive score s+, NaN when no positive is indexed
    judge_score: np.ndarray | None = None  # float32 [B, K], NaN = unjudged
    judge_grade: np.ndarray | None = None  # int8 [B, K], -1 = unjudged
    pos_judge: np.ndarray | None = None  # float32 [B]: minimum judge score of the positives, NaN = none
    wrong_modality: np.ndarray | None = None  # bool [B, K]


@dataclass
class Selection:
    chosen: np.ndarray  # bool [B, K]
    modality_class: np.ndarray  # int8 [B, K]: 1 = C1, 2 = C2, 0 = none
    removed: dict[str, int]
    eligible: int  # non-positive candidates before any filter


def select(b: Batch, cfg: NegativesConfig, plan: MiningPlan) -> Selection:
    """Apply the policies in order; each filter counts the candidates it removed."""
    elig, cls, removed, eligible = eligible_after(b, cfg)
    position = np.cumsum(elig, axis=1) - 1
    window = elig & (position >= plan.range_min) & (position < plan.range_max)
    chosen = _sample(window, cfg, plan.num_negatives, b.cands.query_ids)
    return Selection(chosen, cls, removed, eligible)


def eligible_after(b: Batch, cfg: NegativesConfig, judge: bool = True) -> tuple[np.ndarray, np.ndarray, dict, int]:
    """(eligible mask, modality class, removed per policy, candidates before any filter) after every
    policy but the window; `judge=False` leaves the judge filter out (what the judge is asked about)."""
    c = b.cands
    B, K = c.shape
    valid = c.doc >= 0
    is_pos = np.zeros((B, K), bool)
    for i, pos in enumerate(b.positives):
        pos = pos[pos >= 0]
        if len(pos):
            is_pos[i] = np.isin(c.doc[i], pos)
    elig = valid & ~is_pos
    eligible = int(elig.sum())
    removed: dict[str, int] = {}

    def drop(name: str, mask: np.ndarray) -> None:
        nonlocal elig
        hit = elig & mask
        removed[name] = removed.get(name, 0) + int(hit.sum())
        elig = elig & ~hit

    s = c.score
    smin = b.pos_min.astype(np.float32)[:, None]
    with np.errstate(invalid="ignore"):
        if cfg.absolute_margin is not None:
            drop("absolute_margin", s + np.float32(cfg.absolute_margin) > smin)
        if cfg.relative_margin is not None:
            drop("relative_margin", s > smin - np.abs(smin) * np.float32(cfg.relative_margin))
        if cfg.max_score is not None:
            drop("max_score", s > np.float32(cfg.max_score))
        if cfg.min_score is not None:
            drop("min_score", s < np.float32(cfg.min_score))
        jf = cfg.judge_filter
        if jf.enabled and judge:
            if b.judge_score is None:
                raise ValueError("the judge filter is on but the batch carries no judge scores")
            drop("judge_score", b.judge_score > (b.pos_judge[:, None] - np.float32(jf.beta)))
            drop("judge_grade", b.judge_grade >= jf.drop_grade)
            if jf.unjudged != "keep":  # never let an unjudged candidate through silently
                drop("unjudged", np.isnan(b.judge_score))
        cls = np.zeros((B, K), np.int8)
        if cfg.modality.enabled:
            if b.wrong_modality is None:
                raise ValueError("modality-aware mining needs document modalities")
            lo, hi = cfg.modality.c2_band
            c1 = b.wrong_modality & (s > smin) if cfg.modality.c1 else np.zeros((B, K), bool)
            c2 = (~b.wrong_modality & (c.rank >= lo) & (c.rank <= hi)) if cfg.modality.c2 else np.zeros((B, K), bool)
            cls = np.where(c1, 1, np.where(c2, 2, 0)).astype(np.int8)
            drop("modality", cls == 0)
    return elig, cls, removed, eligible


def _sample(window: np.ndarray, cfg: NegativesConfig, n: int, query_ids: list[str]) -> np.ndarray:
    if cfg.sampling == "top":
        return window & (np.cumsum(window, axis=1) <= n)
    chosen = np.zeros_like(window)
    for i, qid in enumerate(query_ids):
        options = np.flatnonzero(window[i])
        if len(options) <= n:
            chosen[i, options] = True
            continue
        if cfg.sampling == "random":
            # seeded per query, so a query draws the same negatives whichever batch it is mined in
            rng = np.random.default_rng([cfg.seed, _stable_int(qid)])
            picks = rng.choice(len(options), n, replace=False)
        else:  # cyclical: n picks spread evenly over the window, the offset cycling with the query
            stride = len(options) / n
            offset = _stable_int(qid) % max(1, int(stride))
            picks = np.minimum((offset + np.arange(n) * stride).astype(int), len(options) - 1)
        chosen[i, options[picks]] = True
    return chosen


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
