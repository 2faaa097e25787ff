"""Answerability: the judge's verdict on whether each synthetic query is answered by its own
source document, as its own dataset (`query_answerability`) joined on read by `usable_queries`.
The queries dataset has one writer, the queries stage; this stage never rewrites it.
"""
from __future__ import annotations

import pyarrow as pa

from schemas.tables import QUERY_ANSWERABILITY
from tasks.judge.pools import grades_of
from tasks.judge.stage import Judge, label_set
from tasks.runtime.stage import KEY, UNIT, Assembled, Read, Stage, Units


class Answerability(Stage):
    name = "answerability"
    section = "judge"
    reads = (Read("queries"), Read("judgments/*"))
    writes = ("query_answerability",)
    description = "each query's grade on its own source document, by the configured judge"

    def enabled(self) -> bool:
        return self.cfg.enabled and self.cfg.answerability

    def units(self, inputs) -> Units:
        q = inputs["queries"]
        return Units(pa.table({UNIT: q["query_id"], KEY: q["query_id"], "doc_id": q["doc_id"]}))

    def assemble(self, inputs, units: pa.Table, results) -> Assembled:
        judge = Judge(self.config).judge()  # the configured judge, a trained cross-encoder included
        labels = inputs.get(label_set(judge))
        grades = grades_of(labels) if labels is not None else {}
        rows = []
        for q, d in zip(units[UNIT].to_pylist(), units["doc_id"].to_pylist()):
            g = grades.get((q, d))
            rows.append({"query_id": q, "doc_id": d, "judge": judge, "grade": g,
                         "pass_answerable": None if g is None else g >= self.cfg.answerable_min_grade})
        table = pa.Table.from_pylist(rows, schema=QUERY_ANSWERABILITY)
        graded = sum(r["grade"] is not None for r in rows)
        return Assembled({"query_answerability": table}, units[UNIT].to_pylist(), notes={"graded": graded})
