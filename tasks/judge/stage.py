"""The judge stage: graded 0-3 relevance of (query, document) pairs, one label set per judge.

Each judge writes its own dataset, `judgments/<judge>`; the SQL view `judgments` is the union
of every current label set (imports included). Units are pairs keyed by the content the judge
reads (query text, document text, image) x the judge's identity, so a pair graded once by a
judge is never sent to it again; a re-run only merges new pairs into its label set.

Pools (params `pool`): files (`pairs`, `queries`, `docs`); `queries`, the build's synthetic
queries x their top-k in the text index; `imported`, the queries of `negatives.queries_file` x
their top-k (+ their qrels positives); `mining`, the mining query set x its mined candidates
(+ positives), or the exact pairs (`pairs_of`) the negatives stage needs judged. The offline
judge gets its cosines from the embed cache (vectors the catalog already has); a cross-encoder
trained into the catalog (`judge_models/<name>`) is a declared input, so its labels' lineage
reaches the labels it was trained on.
"""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import tasks.judge.analysis  # noqa: F401 - the SQL views over every label set, in every catalog
from schemas.config import JudgeConfig
from schemas.tables import JUDGMENTS
from tasks.judge.cross_encoder import TRAINED, decision_cuts
from tasks.judge.pools import units_from_catalog, units_from_files, with_cosines
from tasks.judge.scoring import OUTPUTS, JudgeWork, judge_name, judgment_rows, load_template
from tasks.runtime.ids import fingerprint
from tasks.runtime.stage import (KEY, UNIT, Assembled, Read, Resources, Stage, Units, Work, fingerprint_fields,
                                 optional)

POOL_FIELDS = ("top_k", "answerability", "answerable_min_grade", "training")  # not how pairs are graded
JUDGMENTS_PREFIX = "judgments/"
POOLS = ("files", "queries", "imported", "mining")


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

    @property
    def pool(self) -> str:
        pool = "files" if self.from_files else self.params.get("pool", "queries")
        if pool not in POOLS:
            raise ValueError(f"unknown judge pool '{pool}'; choose one of {', '.join(POOLS)}")
        return pool

    def enabled(self) -> bool:
        return self.pool != "queries" or self.cfg.enabled

    def model(self):
        """(model folder, judge_models version or None) of a trained judge, else (None, None)."""
        if self.cfg.backend not in TRAINED:
            return None, None
        if not hasattr(self, "_model"):
            from tasks.judge.cross_encoder import resolve_model

            self._model = resolve_model(self.config)
        return self._model

    def judge(self) -> str:
        return judge_name(self.cfg, model_path=self.model()[0])

    def outputs(self) -> tuple[str, ...]:
        return (label_set(self.judge()),)

    def inputs(self) -> tuple[Read, ...]:
        reads = list(super().inputs())
        if self.pool in ("imported", "mining"):
            from tasks.judge.mining_pool import reads_for

            reads = reads_for(self.config, self.pool, self.params)
        ref = self.model()[1]
        if ref is not None:
            reads.append(Read(ref.name))
        return tuple(reads)

    def prompt_shas(self) -> dict[str, str]:
        if self.cfg.backend in ("offline", *TRAINED):
            return {}
        return {"judge_graded": load_template(self.cfg)[1]}

    def work_fingerprint(self) -> str:
        section = {k: v for k, v in fingerprint_fields(self.cfg).items() if k not in POOL_FIELDS}
        return fingerprint({"judge": section, "prompts": self.prompt_shas(),
                            "model": self.judge() if self.cfg.backend in TRAINED else None})

    def units(self, inputs) -> Units:
        fp = self.work_fingerprint()
        pool = self.pool
        if pool == "files":
            p = self.params
            units = units_from_files(p["pairs"], p["queries"], p["docs"], fp, p.get("limit"))
        elif pool in ("imported", "mining"):
            from tasks.judge.mining_pool import units_from_mining

            units = units_from_mining(inputs, self.config, pool, fp, self.params)
        else:
            for needed in ("queries", "documents", "indexes/text"):
                if needed not in inputs:
                    raise LookupError(f"judging the build's queries needs `{needed}` (run the stages before judge), "
                                      "or judge files with --pairs/--queries/--docs")
            units = units_from_catalog(inputs, self.cfg.top_k, fp, with_sources=self.cfg.answerability)
        encoder = self.cosine_encoder()
        if encoder is not None:
            units.table = with_cosines(inputs, units.table, encoder)
        return units

    def cosine_encoder(self):
        """The encoder whose cosines the judge reads: the offline judge's, or the cosine prior of a
        trained judge; None when the judge reads no cosine."""
        if self.cfg.backend == "offline":
            return self.cfg.offline.encoder
        if self.cfg.backend in TRAINED:
            from tasks.judge.cross_encoder import prior_encoder

            return prior_encoder(self.model()[0])
        return None

    def work(self) -> Work:
        cfg = self.cfg
        res = Resources.of(cfg, where="local" if cfg.backend == "openai" else "ray", uses_gpu=cfg.backend != "offline")
        columns = ["query_text", "doc_text", "image_path"]
        args = {"cfg": cfg.model_dump(mode="json")}
        if cfg.backend == "offline":
            res = Resources.of(cfg, batch_size=max(cfg.batch_size, 256), uses_gpu=False)
            columns.append("cosine")
        elif cfg.backend in TRAINED:
            res = Resources.of(cfg, batch_size=max(cfg.batch_size, 64), uses_gpu=cfg.backend == "cross_encoder")
            args["model_path"] = self.model()[0]
            columns.append("cosine")
        return Work(JudgeWork, args, columns, OUTPUTS, res)

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
        cuts = decision_cuts(self.model()[0]) if self.cfg.backend in TRAINED else None
        new = judgment_rows(units.select(["query_id", "doc_id"]), judge, p, status, raw, cuts)
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
