"""Great Expectations suites, one YAML file per table (the contract's tests, beside the schema)."""
from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def suite_for(table: str) -> list[dict]:
    """Expectations of a table as [{type, kwargs}]; embeddings/* share the embeddings suite."""
    base = table.split("/", 1)[0]
    f = HERE / f"{base}.yaml"
    if not f.exists():
        raise KeyError(f"no expectation suite for table '{table}' (looked for {f.name})")
    return yaml.safe_load(f.read_text())["expectations"]
