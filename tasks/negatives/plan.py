"""The mining plan: the window over eligible candidates and the retrieval depth, derived as
sentence-transformers derives them, and the policy tokens every negative records."""
from __future__ import annotations

from dataclasses import dataclass

from schemas.config import NegativesConfig


@dataclass(frozen=True)
class MiningPlan:
    """Resolved window and retrieval depth for one mining job."""

    num_negatives: int
    range_min: int
    range_max: int
    depth: int
    max_positives: int


def plan_mining(cfg: NegativesConfig, max_positives: int) -> MiningPlan:
    """range_max and depth as sentence-transformers derives them, validated the same way."""
    filters = (cfg.absolute_margin is not None or cfg.relative_margin is not None or cfg.max_score is not None
               or cfg.judge_filter.enabled)
    max_positives = max(1, max_positives)
    range_max = cfg.range_max
    if range_max is None:
        range_max = cfg.range_min + (cfg.num_negatives * 10 if filters else cfg.num_negatives) + max_positives
    # the peer retrieves range_max + max_positives + 1: room for every positive and the anchor itself
    depth = cfg.depth or range_max + max_positives + 1
    if cfg.judge_filter.enabled:
        # the filter removes candidates the retriever ranks high: the window deepens, up to the cap,
        # until num_negatives survive (only the candidates the window reaches are judged)
        depth = max(depth, cfg.judge_filter.max_depth + max_positives)
    if cfg.modality.enabled:
        if cfg.modality.c2:
            depth = max(depth, cfg.modality.c2_band[1])
        if cfg.range_max is None:
            range_max = max(range_max, depth)  # the window must not cut the deep C2 band off
    if cfg.range_min >= range_max:
        raise ValueError(f"negatives.range_min ({cfg.range_min}) must be smaller than range_max ({range_max})")
    if cfg.num_negatives > range_max - cfg.range_min:
        raise ValueError(f"cannot mine {cfg.num_negatives} negatives per query: only {range_max - cfg.range_min} "
                         f"candidates remain between range_min={cfg.range_min} and range_max={range_max}; "
                         "lower num_negatives or range_min, or raise range_max")
    return MiningPlan(cfg.num_negatives, cfg.range_min, range_max, depth, max_positives)


def policy_tokens(cfg: NegativesConfig, plan: MiningPlan) -> list[str]:
    """The policies every negative of this job went through, as `name=value` tokens."""
    t = [f"source={cfg.source}", f"window={plan.range_min}-{plan.range_max}"]
    if cfg.absolute_margin is not None:
        t.append(f"abs_margin={cfg.absolute_margin:g}")
    if cfg.relative_margin is not None:
        t.append(f"rel_margin={cfg.relative_margin:g}")
    if cfg.max_score is not None:
        t.append(f"max_score={cfg.max_score:g}")
    if cfg.min_score is not None:
        t.append(f"min_score={cfg.min_score:g}")
    jf = cfg.judge_filter
    if jf.enabled:
        t.append(f"judge_filter=beta:{jf.beta:g},grade<{jf.drop_grade},unjudged:{jf.unjudged},depth<={plan.depth}")
    t.append(f"sampling={cfg.sampling}" + (f":{cfg.seed}" if cfg.sampling == "random" else ""))
    return t


# ---- candidates ----------------------------------------------------------------------------------
