"""Query generation: versioned prompts per target, the offline extractive baseline and LLMs.

The generator is the offline extractive baseline or an LLM (`hf` / `openai`) prompted with a
versioned file per target. A unit is one (document, target); its cache key is its content for
that target x that target's fingerprint, so bumping one target's prompt regenerates only it.
"""
from __future__ import annotations

import re

import pyarrow as pa

from schemas.config import QueriesConfig
from tasks.backends.offline import EXTRACTIVE, extractive_queries
from tasks.prompts import load_prompt
from tasks.runtime.ids import fingerprint
from tasks.runtime.stage import KEY

TARGETS = ("text", "image", "text+image")
PROMPT_NAMES = {"text": "queries_text", "image": "queries_image", "text+image": "queries_text_image"}
OUTPUTS = pa.schema([("texts", pa.list_(pa.string())), ("generator", pa.string())])

# ---- prompts and fingerprints ----------------------------------------------------------------
def target_prompts(cfg: QueriesConfig) -> dict[str, tuple[str | None, str | None]]:
    """target -> (prompt text, sha); the offline generator reads no prompt, its version names the recipe."""
    out = {}
    for t in cfg.targets:
        version = cfg.prompt_versions.get(t, "v1")
        out[t] = (None, None) if cfg.backend == "offline" else load_prompt(PROMPT_NAMES[t], version, cfg.prompts_dir)
    return out


def target_fingerprints(cfg: QueriesConfig, prompts: dict | None = None) -> dict[str, str]:
    """One fingerprint per target: generator, that target's prompt (version + text) and parameters."""
    prompts = prompts or target_prompts(cfg)
    common = {"backend": cfg.backend, "model": cfg.model, "revision": cfg.revision, "dtype": cfg.dtype,
              "per_target": cfg.per_target, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
              "seed": cfg.seed if cfg.backend == "offline" else None,
              "recipe": EXTRACTIVE if cfg.backend == "offline" else None}  # a new offline recipe regenerates
    return {t: fingerprint(common | {"target": t, "prompt_version": cfg.prompt_versions.get(t, "v1"),
                                     "prompt_sha256": prompts[t][1]}) for t in cfg.targets}


def render_prompt(template: str, text: str | None, caption: str | None, n: int) -> str:
    """One pass over the placeholders, with the inserted text neutralised: a document can neither
    close its triple-quoted block (however its quotes are spelled) nor fill another placeholder."""
    from tasks.prompts.guard import fill, neutralise

    return fill(template, {"text": neutralise(text or ""), "caption": neutralise(caption or ""), "n": str(n)})


_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.):]|q\d*[.:)]|query\s*\d*[.:)])\s*", re.I)


def parse_queries(output: str, n: int) -> list[str]:
    """One query per line; numbering, bullets and quotes removed; preambles ending in ':' skipped."""
    out: list[str] = []
    for line in (output or "").splitlines():
        q = _BULLET.sub("", line).strip().strip('"\u201c\u201d\'').strip()
        if not q or q.endswith(":") or q in out:
            continue
        out.append(q)
        if len(out) == n:
            break
    return out


def generate_offline(units: pa.Table, cfg: QueriesConfig) -> pa.Table:
    """The extractive baseline, seeded per unit content so the same input gives the same queries."""
    keys, texts, errors = [], [], []
    for u in units.to_pylist():
        seed = int(u["content_sha256"][:12], 16) ^ cfg.seed
        qs = extractive_queries(u["target"], u["text"], u["caption"], cfg.per_target, seed)
        keys.append(u[KEY])
        texts.append(qs)
        errors.append(None if qs else "no queries: too few content words to crop from")
    return pa.table({KEY: keys, "texts": pa.array(texts, pa.list_(pa.string())),
                     "generator": [EXTRACTIVE] * len(keys), "error": pa.array(errors, pa.string())})


def generate_batch(backend, units: pa.Table, prompts: dict[str, str], n: int, max_new_tokens: int) -> pa.Table:
    """LLM generation for one batch; a failed call or an answer with no parsable query is an error row."""
    from tasks.backends.registry import generate_outcomes

    rows = units.to_pylist()
    rendered = [render_prompt(prompts[u["target"]], u["text"], u["caption"], n) for u in rows]
    texts, errors = [], []
    for o in generate_outcomes(backend, rendered, max_new_tokens):
        qs = parse_queries(o.value, n) if o.ok else []
        texts.append(qs)
        errors.append(f"generation failed: {o.error}" if not o.ok else
                      None if qs else f"no query could be parsed from the model output: {(o.value or '')[:200]!r}")
    return pa.table({KEY: [u[KEY] for u in rows], "texts": pa.array(texts, pa.list_(pa.string())),
                     "generator": [backend.name] * len(rows), "error": pa.array(errors, pa.string())})


class QueryWork:
    """Builds the generator once (nothing for the offline baseline) and generates batches of units."""

    def __init__(self, args: dict, device: str = "cpu"):
        self.cfg = QueriesConfig.model_validate(args["cfg"])
        self.prompts = args["prompts"]
        self.backend = None
        if self.cfg.backend != "offline":
            from tasks.backends.registry import build_generator

            self.backend = build_generator(self.cfg, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.backend is None:
            return generate_offline(batch, self.cfg)
        return generate_batch(self.backend, batch, self.prompts, self.cfg.per_target, self.cfg.max_new_tokens)
