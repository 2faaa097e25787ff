"""Versioned prompt files: `<name>.<version>.txt` in this folder (or a configured folder).

A prompt's version and the sha256 of its text enter the stage fingerprint, so editing or
bumping a prompt regenerates exactly the outputs made with it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prompt_path(name: str, version: str, folder: str | Path | None = None) -> Path:
    return Path(folder or HERE) / f"{name}.{version}.txt"


def load_prompt(name: str, version: str, folder: str | Path | None = None) -> tuple[str, str]:
    """(text, sha256 of the text); a missing file names the versions that exist."""
    path = prompt_path(name, version, folder)
    if not path.exists():
        found = sorted(p.name for p in Path(folder or HERE).glob(f"{name}.*.txt"))
        raise FileNotFoundError(f"prompt file {path} does not exist; available for '{name}': {found or 'none'}")
    text = path.read_text(encoding="utf-8").strip()
    return text, hashlib.sha256(text.encode()).hexdigest()[:16]
