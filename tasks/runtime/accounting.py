"""Quarantine rows and the accounting error.

Every rejected input carries a human-readable reason. The runner (tasks.runtime.runner) takes
rows in / out / quarantined / deduplicated itself and refuses an output where they do not add
up with an AccountingError that names the four numbers.
"""
from __future__ import annotations

import json

import pyarrow as pa

from schemas.tables import QUARANTINE

PAYLOAD_CHARS = 4000


class AccountingError(AssertionError):
    pass


def payload_json(payload) -> str:
    return storable(json.dumps(payload, default=str, ensure_ascii=False)[:PAYLOAD_CHARS])


def storable(s: str) -> str:
    """A string Arrow and DuckDB can store: a lone surrogate from bad input becomes an escape."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


class Quarantine:
    """Collects rejected inputs of one stage, each with a human-readable reason."""

    def __init__(self, stage: str):
        self.stage = stage
        self.rows: list[dict] = []

    def add(self, key: str, reason: str, payload: dict | str | None = None) -> None:
        if payload is not None and not isinstance(payload, str):
            payload = payload_json(payload)
        self.rows.append({"stage": self.stage, "key": str(key), "reason": reason, "payload": payload})

    def __len__(self) -> int:
        return len(self.rows)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=QUARANTINE)
