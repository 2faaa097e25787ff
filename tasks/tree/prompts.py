"""Versioned prompt files for the tree stage (`tasks/prompts/tree_*.txt`).

A prompt's version is the hash of its text, so editing a prompt changes the summarizer's
identity and the tree's fingerprint; placeholders are `{name}` and are filled in one pass, so JSON examples in a prompt need no escaping.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


@lru_cache(maxsize=None)
def load(name: str) -> str:
    path = PROMPTS / f"tree_{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} is missing")
    return path.read_text()


def version(name: str) -> str:
    return hashlib.sha256(load(name).encode()).hexdigest()[:10]


def render(name: str, **values: str) -> str:
    """One pass, so a document that holds `{members}` is never substituted again."""
    from tasks.prompts.guard import fill

    return fill(load(name), values)


def as_chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]
