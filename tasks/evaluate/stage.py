"""The two stages of the closed loop.

- `Train` fine-tunes one model per training set (an export, with or without its hard negatives)
  and publishes `models`: one row per saved model, whose parents are the negatives behind each export.
- `Evaluate` scores the base model and each tuned model on one evaluation set and publishes
  `evaluations` (one row per variant and evaluation set), whose parents are the models, the label
  set used as qrels and the corpus; the export and model paths are columns and version meta.

Both upsert into their previous version, so results of earlier runs (other variants, other
evaluation sets) stay visible; each row carries the run that produced it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import EVALUATIONS, MODELS
from tasks.evaluate.train import OUTPUTS, TrainWork
from tasks.runtime.ids import record_id
from tasks.runtime.stage import KEY, UNIT, Assembled, Output, Read, Resources, Stage, Units, Work, optional

BASE = "base"


def models_dir(config) -> str:
    ev = config.evaluate
    return config.resolve(ev.models_dir) if ev.models_dir else config.resolve(str(Path(config.workdir) / "models"))


class Train(Stage):
    """params: runs = [{variant, export_path, negatives, hard_negatives}]"""

    name = "train"
    section = "evaluate"
    writes = ("models",)
    incremental = True
    description = "fine-tune a sentence-transformers retriever (MultipleNegativesRankingLoss) per training set"

    @property
    def cfg(self):
        return self.config.evaluate.train

    def inputs(self) -> tuple[Read, ...]:
        names = dict.fromkeys(r["negatives"] for r in self.params["runs"] if r.get("negatives"))
        return tuple(optional(n) for n in names)

    def units(self, inputs) -> Units:
        fp = self.work_fingerprint()
        rows = []
        for r in self.params["runs"]:
            rows.append({UNIT: r["variant"], KEY: record_id(r["variant"], r["export_path"], bool(r["hard_negatives"]), fp),
                         "variant": r["variant"], "export_path": r["export_path"],
                         "hard_negatives": bool(r["hard_negatives"]), "negatives": r.get("negatives")})
        schema = pa.schema([(UNIT, pa.string()), (KEY, pa.string()), ("variant", pa.string()),
                            ("export_path", pa.string()), ("hard_negatives", pa.bool_()), ("negatives", pa.string())])
        return Units(pa.Table.from_pylist(rows, schema=schema))

    def work(self) -> Work:
        cfg = self.cfg
        args = {"train": cfg.model_dump(mode="json"), "models_dir": models_dir(self.config), "name": self.config.name}
        return Work(TrainWork, args, ["variant", "export_path", "hard_negatives"], OUTPUTS,
                    Resources(where="local", batch_size=1, device=cfg.device, threads=cfg.threads), cached=False)

    def payload(self, unit: dict) -> dict:
        return {"variant": unit["variant"], "export_path": unit["export_path"]}

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        from tasks.backends.embedders import text_space
        from schemas.config import TextEncoder

        got = {} if results is None else {r[KEY]: r for r in results.to_pylist()}
        base = text_space(TextEncoder(model=self.cfg.model, revision=self.cfg.revision))
        rows = []
        for u in units.to_pylist():
            r = got[u[KEY]]
            ref = inputs.ref(u["negatives"]) if u["negatives"] else None
            rows.append({"model_id": r["model_id"], "variant": u["variant"], "base_model": base, "path": r["path"],
                         "weights_sha256": r["weights_sha256"], "export_path": u["export_path"],
                         "negatives": ref.ref if ref else u["negatives"], "hard_negatives": r["hard_negatives"],
                         "train_pairs": r["train_pairs"], "train_steps": r["train_steps"],
                         "batch_size": self.cfg.batch_size, "train_s": r["train_s"], "loss": r["loss"],
                         "run_id": inputs.run.run_id if inputs.run else None})
        new = pa.Table.from_pylist(rows, schema=MODELS)
        notes = {"models": {r["variant"]: r for r in rows}}
        meta = {"models": {r["model_id"]: {"path": r["path"], "export": r["export_path"]} for r in rows}}
        return Assembled({"models": Output(new, meta=meta, mode="upsert", upsert_keys=["model_id"])}, units[UNIT].to_pylist(), notes=notes,
                         model_calls=len(rows))


class Evaluate(Stage):
    """params: eval_set (judgments/<name>), queries_file (topics or None), models = [{variant, model_id}]"""

    name = "evaluate"
    section = "evaluate"
    writes = ("evaluations",)
    incremental = True
    description = "nDCG@10, Recall@100 and MRR@10 (ir_measures) of the base and the tuned models"

    def inputs(self) -> tuple[Read, ...]:
        reads = [Read("documents"), optional("captions"), optional("queries"), Read(self.params["eval_set"])]
        if self.params.get("models"):
            reads.append(Read("models"))
        return tuple(reads)

    def units(self, inputs) -> Units:
        variants = [BASE] + [m["variant"] for m in self.params.get("models", [])]
        ids = pa.array(variants, pa.string())
        return Units(pa.table({UNIT: ids, KEY: ids}))

    def assemble(self, inputs, units: pa.Table, results) -> Assembled:
        from tasks.backends.embedders import text_space
        from tasks.evaluate.evalset import load_eval_set
        from tasks.evaluate.metrics import paired_p, score
        from tasks.evaluate.retrieval import corpus_texts, retrieve
        from tasks.judge import trec_io

        cfg, p = self.cfg, self.params
        eval_set = p["eval_set"]
        topics = trec_io.read_topics(p["queries_file"], stage=self.name).table if p.get("queries_file") else None
        es = load_eval_set(eval_set, inputs[eval_set], inputs["documents"], topics, inputs.get("queries"))
        doc_ids, texts = corpus_texts(inputs["documents"], inputs.get("captions"))
        base_enc = self.config.embed.text.model_copy(update={"model": cfg.train.model, "revision": cfg.train.revision})
        models = {}
        if p.get("models"):
            m = inputs["models"]
            models = {r["model_id"]: r for r in m.filter(pc.is_in(m["model_id"], value_set=pa.array(
                [x["model_id"] for x in p["models"]], pa.string()))).to_pylist()}
        run_id = inputs.run.run_id if inputs.run else None
        rows, scores = [], {}
        for variant in units[UNIT].to_pylist():
            if variant == BASE:
                enc, model, row = base_enc, None, {}
            else:
                model = models[next(x["model_id"] for x in p["models"] if x["variant"] == variant)]
                enc = base_enc.model_copy(update={"model": model["path"], "revision": None})
            run = retrieve(inputs, enc, doc_ids, texts, es.queries, cfg.depth)
            s = scores[variant] = score(es.qrels, run, cfg.relevance_level)
            gain = p_value = None
            if variant != BASE:
                gain = s.mean["ndcg_10"] - scores[BASE].mean["ndcg_10"]
                p_value = paired_p(scores[BASE], s)
            rows.append({"eval_set": eval_set, "variant": variant, "role": BASE if variant == BASE else "tuned",
                         "model": text_space(enc) if model is None else model["path"],
                         "model_id": model["model_id"] if model else None, "queries": s.queries,
                         "relevance_level": cfg.relevance_level, **s.mean, "ndcg_10_gain": gain, "ndcg_10_p": p_value,
                         "train_pairs": model["train_pairs"] if model else None,
                         "export_path": model["export_path"] if model else None,
                         "per_query": json.dumps(s.per_query, sort_keys=True), "run_id": run_id})
        new = pa.Table.from_pylist(rows, schema=EVALUATIONS)
        meta = {"eval_set": eval_set, "eval_set_counts": es.counts, "corpus_documents": len(doc_ids),
                "models": {r["variant"]: {"model": r["model"], "export": r["export_path"]} for r in rows}}
        notes = {"eval_set": eval_set, "counts": es.counts,
                 "results": [{k: r[k] for k in ("variant", "role", "model", "queries", "ndcg_10", "recall_100",
                                                 "mrr_10", "ndcg_10_gain", "ndcg_10_p", "train_pairs", "export_path")}
                             for r in rows]}
        return Assembled({"evaluations": Output(new, meta=meta, mode="upsert", upsert_keys=["eval_set", "variant"])}, units[UNIT].to_pylist(), notes=notes)
