"""What a stage returns, and the check that it lost nothing.

Every stage reports rows in, rows out, rows quarantined (each with a reason) and rows
deduplicated; `StageOutput.check()` refuses an output where they do not add up.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

from schemas.tables import QUARANTINE


class AccountingError(AssertionError):
    pass


class Quarantine:
    """Collects rejected inputs of one stage, each with a human-readable reason."""

    def __init__(self, stage: str):
        self.stage = stage
        self.rows: list[dict] = []

    def add(self, key: str, reason: str, payload: dict | str | None = None) -> None:
        if payload is not None and not isinstance(payload, str):
            payload = json.dumps(payload, default=str, ensure_ascii=False)[:4000]
        self.rows.append({"stage": self.stage, "key": str(key), "reason": reason, "payload": payload})

    def __len__(self) -> int:
        return len(self.rows)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=QUARANTINE)


@dataclass
class StageOutput:
    """Tables a stage wants published, plus its accounting."""

    stage: str
    tables: dict[str, pa.Table]
    rows_in: int
    rows_out: int
    quarantine: pa.Table = field(default_factory=QUARANTINE.empty_table)
    rows_deduplicated: int = 0
    model_calls: int = 0
    cache_hits: int = 0
    notes: dict = field(default_factory=dict)

    @property
    def rows_quarantined(self) -> int:
        return self.quarantine.num_rows

    def check(self) -> "StageOutput":
        total = self.rows_out + self.rows_quarantined + self.rows_deduplicated
        if self.rows_in != total:
            raise AccountingError(
                f"stage {self.stage} lost rows: in={self.rows_in} but out={self.rows_out} + "
                f"quarantined={self.rows_quarantined} + deduplicated={self.rows_deduplicated} = {total}"
            )
        return self

    def counts(self) -> dict:
        return {"stage": self.stage, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "rows_quarantined": self.rows_quarantined, "rows_deduplicated": self.rows_deduplicated,
                "model_calls": self.model_calls, "cache_hits": self.cache_hits}
