"""The judge stage: graded 0-3 relevance of (query, document) pairs, one label set per judge.

Each judge writes its own dataset, `judgments/<judge>`; the SQL view `judgments` is the union
of every current label set (imports included). Units are pairs keyed by the content the judge
reads (query text, document text, image) x the judge's identity, so a pair graded once by a
judge is never sent to it again; a re-run only merges new pairs into its label set.
"""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import tasks.judge.analysis  # noqa: F401 - the SQL views over every label set, in every catalog
from schemas.config import JudgeConfig
from schemas.tables import JUDGMENTS
from tasks.judge.pools import units_from_catalog, units_from_files
from tasks.judge.scoring import OUTPUTS, JudgeWork, judge_name, judgment_rows, load_template
from tasks.runtime.ids import fingerprint
from tasks.runtime.stage import KEY, UNIT, Assembled, Resources, Stage, Units, Work, fingerprint_fields, optional

POOL_FIELDS = ("top_k", "answerability", "answerable_min_grade")  # which pairs, not how they are graded
JUDGMENTS_PREFIX = "judgments/"


def label_set(judge: str) -> str:
    """The dataset of one judge's labels: `judgments/<judge>`, with a name safe for files and SQL."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", judge).strip("_.") or "judge"
    return JUDGMENTS_PREFIX + slug[:120]


class Judge(Stage):
    name = "judge"
    section = "judge"
    reads = (optional("queries"), optional("documents"), optional("captions"), optional("indexes/text"))
    writes = ()
    incremental = True
    description = "graded 0-3 judgments of the synthetic queries x their top-k documents"

    @property
    def cfg(self) -> JudgeConfig:
        return self.config.judge

    @property
    def from_files(self) -> bool:
        return bool(self.params.get("pairs"))

    def enabled(self) -> bool:
        return self.from_files or self.cfg.enabled

    def judge(self) -> str:
        return judge_name(self.cfg)

    def outputs(self) -> tuple[str, ...]:
        return (label_set(self.judge()),)

    def prompt_shas(self) -> dict[str, str]:
        return {} if self.cfg.backend == "offline" else {"judge_graded": load_template(self.cfg)[1]}

    def work_fingerprint(self) -> str:
        section = {k: v for k, v in fingerprint_fields(self.cfg).items() if k not in POOL_FIELDS}
        return fingerprint({"judge": section, "prompts": self.prompt_shas()})

    def units(self, inputs) -> Units:
        fp = self.work_fingerprint()
        if self.from_files:
            p = self.params
            return units_from_files(p["pairs"], p["queries"], p["docs"], fp, p.get("limit"))
        for needed in ("queries", "documents", "indexes/text"):
            if needed not in inputs:
                raise LookupError(f"judging the build's queries needs `{needed}` (run the stages before judge), "
                                  "or judge files with --pairs/--queries/--docs")
        return units_from_catalog(inputs, self.cfg.top_k, fp, with_sources=self.cfg.answerability)

    def work(self) -> Work:
        cfg = self.cfg
        res = Resources.of(cfg, where="local" if cfg.backend == "openai" else "ray", uses_gpu=cfg.backend == "hf")
        if cfg.backend == "offline":
            res = Resources.of(cfg, batch_size=max(cfg.batch_size, 256), uses_gpu=False)
        return Work(JudgeWork, {"cfg": cfg.model_dump(mode="json")}, ["query_text", "doc_text", "image_path"],
                    OUTPUTS, res)

    def payload(self, unit: dict) -> dict:
        return {"query_id": unit["query_id"], "doc_id": unit["doc_id"]}

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        judge = self.judge()
        name = label_set(judge)
        got = {} if results is None else dict(zip(results[KEY].to_pylist(),
                                                  zip(results["p_grade"].to_pylist(), results["status"].to_pylist(),
                                                      results["raw"].to_pylist())))
        p, status, raw = [], [], []
        for k in units[KEY].to_pylist():
            pg, st, rw = got[k]
            p.append(pg)
            status.append(st)
            raw.append(rw)
        new = judgment_rows(units.select(["query_id", "doc_id"]), judge, p, status, raw)
        merged = merge(inputs.previous(name), new, ["query_id", "doc_id"])
        counts = {s: int(np.sum(np.asarray(status) == s)) for s in ("ok", "parse_error", "refused")}
        return Assembled({name: merged}, units[UNIT].to_pylist(), notes={"judge": judge, "statuses": counts})

    def report(self, outcome) -> None:
        from tasks.runtime.prefect_support import run_logger

        run_logger().info("judge %s: %d pairs, %d judged now, %d cached, statuses %s", outcome.notes.get("judge"),
                          outcome.rows_out, outcome.model_calls, outcome.cache_hits, outcome.notes.get("statuses"))


def merge(current: pa.Table | None, new: pa.Table, keys: list[str]) -> pa.Table:
    """Upsert: the current rows whose key the new rows do not have, plus the new rows."""
    new = new.cast(JUDGMENTS) if set(new.column_names) == set(JUDGMENTS.names) else new
    if current is None or current.num_rows == 0:
        return new
    current = current.cast(new.schema)
    idx = current.select(keys).append_column("_row", pa.array(range(current.num_rows), pa.int64()))
    drop = idx.join(new.select(keys), keys, join_type="inner").column("_row")
    keep = current.filter(pc.invert(pc.is_in(pa.array(range(current.num_rows), pa.int64()), value_set=drop)))
    return pa.concat_tables([keep, new])
