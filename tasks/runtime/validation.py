"""The validation gate: run a table's Great Expectations suite before it may be published.

GX validates a pandas frame through an ephemeral context (its SQL path against DuckDB is
broken). List columns are summarised first into derived scalar columns (`<col>__len`,
`<col>__finite`) and a few presence flags, which the suites in `schemas/expectations` use.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.expectations import suite_for

log = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    table: str
    success: bool
    rows: int
    failures: list[dict] = field(default_factory=list)  # {expectation, column, unexpected_count, detail}
    evaluated: int = 0

    def to_json(self) -> dict:
        return {"table": self.table, "success": self.success, "rows": self.rows,
                "evaluated": self.evaluated, "failures": self.failures}

    def summary(self) -> str:
        if self.success:
            return f"{self.table}: {self.evaluated} expectations passed on {self.rows} rows"
        parts = [f"{f['expectation']}({f.get('column') or ''}) failed on {f['unexpected_count']} rows"
                 for f in self.failures]
        return f"{self.table}: " + "; ".join(parts)


class ValidationFailed(RuntimeError):
    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(f"validation blocked the publish of {report.summary()}")


def _frame(table: pa.Table):
    """Scalar columns plus derived summaries of list columns, as pandas."""
    cols, names = [], []
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
            lengths = pc.list_value_length(col)
            cols.append(lengths)
            names.append(f"{name}__len")
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
            if flat.dtype.kind == "f" and len(lengths):
                # per row: no non-finite value (a NULL or empty list counts as finite)
                finite = np.ones(table.num_rows, bool)
                parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
                finite[parents[~np.isfinite(flat)]] = False
                cols.append(pa.array(finite))
            else:
                cols.append(pa.array(np.ones(table.num_rows, bool)))
            names.append(f"{name}__finite")
        else:
            cols.append(col)
            names.append(name)
    if "text" in table.column_names:
        cols.append(pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table["text"])), 0), False))
        names.append("__has_text")
    if "image_uri" in table.column_names:
        cols.append(pc.is_valid(table["image_uri"]))
        names.append("__has_image")
    if {"modality", "__has_text", "__has_image"} <= set(names):
        cols.append(_modality_matches_content(table["modality"], cols[names.index("__has_text")],
                                              cols[names.index("__has_image")]))
        names.append("__modality_matches_content")
    if "grade" in table.column_names and "status" in table.column_names:
        cols.append(pc.equal(pc.fill_null(pc.equal(table["status"], "ok"), False), pc.is_valid(table["grade"])))
        names.append("__grade_matches_status")
    if "grade" in table.column_names:
        cols.append(pc.is_valid(table["grade"]))
        names.append("__has_grade")
    return pa.table(cols, names=names).to_pandas()


def _modality_matches_content(modality, has_text, has_image):
    """text: text only; image: an image only; interleaved: both (vectorised, unlike GX's pair checks)."""
    is_ = lambda m: pc.fill_null(pc.equal(modality, m), False)  # noqa: E731
    return pc.or_(pc.or_(pc.and_(is_("text"), pc.and_(has_text, pc.invert(has_image))),
                         pc.and_(is_("image"), pc.and_(has_image, pc.invert(has_text)))),
                  pc.and_(is_("interleaved"), pc.and_(has_text, has_image)))


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx  # lazy: the import costs about 3 s

    ctx = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # noqa: BLE001 - cosmetic only
        log.debug("could not switch off GX progress bars")
    source = ctx.data_sources.add_pandas("corpusforge")
    asset = source.add_dataframe_asset("table")
    return gx, asset.add_batch_definition_whole_dataframe("whole")


def _expectation(gx, spec: dict):
    cls_name = "".join(w.capitalize() for w in spec["type"].split("_"))
    cls = getattr(gx.expectations, cls_name, None)
    if cls is None:
        raise ValueError(f"unknown expectation type '{spec['type']}'")
    return cls(**spec.get("kwargs", {}))


def validate(table_name: str, table: pa.Table, extra: list[dict] | None = None) -> ValidationReport:
    """Run the table's suite (plus config-supplied expectations) and report failures."""
    specs = list(suite_for(table_name)) + list(extra or [])
    if table.num_rows == 0:
        return ValidationReport(table_name, True, 0, evaluated=0)
    gx, batch_def = _context()
    df = _frame(table)
    suite = gx.ExpectationSuite(name=re.sub(r"\W", "_", table_name))
    for spec in specs:
        suite.add_expectation(_expectation(gx, spec))
    result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite)
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        res = r.result or {}
        exc = (r.exception_info or {}).get("exception_message") if isinstance(r.exception_info, dict) else None
        failures.append({
            "expectation": cfg.type,
            "column": cfg.kwargs.get("column") or cfg.kwargs.get("column_list") or cfg.kwargs.get("column_A"),
            "unexpected_count": int(res.get("unexpected_count") or 0),
            "unexpected_sample": [str(v) for v in (res.get("partial_unexpected_list") or [])[:5]],
            "detail": exc,
        })
    return ValidationReport(table_name, not failures, table.num_rows, failures, evaluated=len(result.results))
