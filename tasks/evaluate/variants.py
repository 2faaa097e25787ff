"""Variants of the training data, for ablations over one evaluation set.

- `export`: the current sentence-transformers export of `negatives`, as the build made it;
- `in_batch`: the pairs of `mined`, without hard negatives (MNRL's in-batch negatives only);
- `mined`: negatives mined with the build's policies but without the judge filter;
- `judge_filtered`: the same with the UniME-V2 judge filter on;
- a named policy set (`evaluate.policies`): the build's negatives section with those overrides.

Each mined variant is published as `negatives/ablation-<variant>` (and its candidates as
`candidates/ablation-<variant>`) by the real negatives stage, so the build's own `negatives` stay
as they are and every variant can be inspected in SQL like any other dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas.config import BuildConfig, NegativesConfig, _deep_merge
from tasks.negatives.stage import Negatives

PREFIX = "ablation-"


@dataclass(frozen=True)
class Variant:
    name: str
    negatives: str  # the negatives dataset its export is written from
    hard_negatives: bool  # False: anchor and positive only
    overrides: dict | None = None  # negatives-section overrides; None: use the dataset as it is

    @property
    def mined_here(self) -> bool:
        return self.overrides is not None


def variant(name: str, cfg: BuildConfig) -> Variant:
    """The built-in variants and the named policy sets of evaluate.policies."""
    if name == "export":
        return Variant("export", "negatives", True)
    if name == "in_batch":
        return Variant("in_batch", f"negatives/{PREFIX}mined", False, {"judge_filter": {"enabled": False}})
    if name == "mined":
        return Variant("mined", f"negatives/{PREFIX}mined", True, {"judge_filter": {"enabled": False}})
    if name == "judge_filtered":
        return Variant("judge_filtered", f"negatives/{PREFIX}judge_filtered", True, {"judge_filter": {"enabled": True}})
    if name in cfg.evaluate.policies:
        return Variant(name, f"negatives/{PREFIX}{name}", True, cfg.evaluate.policies[name])
    raise ValueError(f"unknown variant {name!r}: use export, in_batch, mined, judge_filtered or a name in "
                     f"evaluate.policies ({', '.join(cfg.evaluate.policies) or 'none defined'})")


def variant_config(cfg: BuildConfig, v: Variant) -> BuildConfig:
    """The config whose negatives section mines this variant."""
    section = NegativesConfig.model_validate(_deep_merge(cfg.negatives.model_dump(mode="json"), v.overrides or {}))
    return cfg.model_copy(update={"negatives": section})


class AblationNegatives(Negatives):
    """The negatives stage, writing a variant's own datasets instead of the build's."""

    name = "ablation_negatives"
    description = "hard negatives for one training-data variant of an ablation"

    def __init__(self, config, **params):
        super().__init__(config, **params)
        self.variant = params["variant"]

    def outputs(self) -> tuple[str, ...]:
        return (f"negatives/{PREFIX}{self.variant}", f"candidates/{PREFIX}{self.variant}")
