"""Synthetic corpora for benchmarks, built from real passage text so lengths are realistic."""
from __future__ import annotations

import json
import random
from pathlib import Path

LLMJUDGE_PASSAGES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "llmjudge" / "data" / "llm4eval_test_passages_2024.jsonl"
FALLBACK_WORDS = ("river harbour crane bicycle kitchen market winter museum garden violin train ocean forest "
                  "library theatre bridge castle meadow island lantern").split()


def passages() -> list[str]:
    if LLMJUDGE_PASSAGES.exists():
        return [json.loads(l)["doc"] for l in LLMJUDGE_PASSAGES.read_text().splitlines() if l.strip()]
    rng = random.Random(0)
    return [" ".join(rng.choice(FALLBACK_WORDS) for _ in range(60)) for _ in range(2000)]


def synthetic_texts(n: int, seed: int = 0, max_words: int = 48) -> list[str]:
    """n distinct texts: real passages cropped to caption/snippet length, each with a distinct prefix."""
    base = [" ".join(p.split()[:max_words]) for p in passages()]
    rng = random.Random(seed)
    return [f"[{i}] {base[rng.randrange(len(base))]}" for i in range(n)]


def write_manifest(folder: Path, texts: list[str], name: str = "documents.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc-{i}", "text": t}) + "\n")
    return folder / name


FOUNDATION_ONLY = ("caption:\n  enabled: false\nqueries:\n  enabled: false\ntree:\n  enabled: false\n"
                   "negatives:\n  enabled: false\n")


def write_config(folder: Path, corpus: Path, workdir: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "config.yaml"
    cfg.write_text(f"name: bench\ncorpus:\n  root: {corpus}\n  sources:\n    - kind: manifest\n      path: documents.jsonl\n"
                   f"workdir: {workdir}\nflow:\n  retries: 0\n{extra}")
    return cfg
