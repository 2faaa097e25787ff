"""The train_judge stage: a cross-encoder judge trained from one label set in the catalog.

Units are the label set's (query, document) labels in the chosen split; a label the judge could
not give (parse_error, refused, error, no grade) is never a training label and is rejected with
its status, as is a pair whose query or document text cannot be found. The output,
`judge_models/<name>`, is the table of training labels with the trained CrossEncoder stored in
the version's `model/` folder; its lineage names the label set version it learnt from, so a
judge's labels can always be traced back to the labels its judge was trained on.

Texts come from files (a topics file and a passages file, as `corpusforge judge` reads them) or
from the catalog: the documents (by doc_id or source id) and the pipeline's or imported queries.
Training the same labels with the same settings again is a no-op.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa

from tasks.judge.cross_encoder import MODEL_DIR, model_dataset
from tasks.judge.stage import label_set
from tasks.judge.train import SPLITS, in_split, train_cross_encoder
from tasks.runtime.ids import fingerprint
from tasks.runtime.publish import conform
from tasks.runtime.stage import KEY, UNIT, Assembled, Output, Read, Stage, Units, fingerprint_fields, optional

UNIT_SCHEMA = pa.schema([(UNIT, pa.string()), (KEY, pa.string()), ("query_id", pa.string()), ("doc_id", pa.string()),
                         ("query_text", pa.string()), ("doc_text", pa.string()), ("grade", pa.int8())])


def default_name(labels: str, split: str) -> str:
    return label_set(labels).split("/", 1)[1] + ("" if split == "all" else f"-{split}")


class TrainJudge(Stage):
    name = "train_judge"
    section = "judge"
    incremental = True
    description = "a judge (four grades; a cross-encoder or a feature judge) trained from a label set"

    def __init__(self, config, **params):
        super().__init__(config, **params)
        if not params.get("labels"):
            raise ValueError("train-judge needs the label set to learn from (a judge name in the catalog)")
        if params.setdefault("split", "all") not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {params['split']!r}")
        params.setdefault("name", default_name(params["labels"], params["split"]))

    @property
    def model_name(self) -> str:
        return self.params["name"]

    def inputs(self) -> tuple[Read, ...]:
        return (Read(label_set(self.params["labels"])), optional("documents"), optional("captions"),
                optional("queries"))

    def outputs(self) -> tuple[str, ...]:
        return (model_dataset(self.model_name),)

    def fingerprint(self) -> str:
        """What the model depends on: the training settings and the invocation (labels, split, files)."""
        return fingerprint({"stage": self.name, "training": fingerprint_fields(self.cfg.training),
                            "params": self.params})

    def units(self, inputs) -> Units:
        labels = inputs[label_set(self.params["labels"])]
        split = self.params["split"]
        qtext, dtext = self._texts(inputs)
        rows, rejected = [], []
        for r in labels.select(["query_id", "doc_id", "grade", "status"]).to_pylist():
            q, d = r["query_id"], r["doc_id"]
            if not in_split(q, split):
                continue  # the other half is held out: not an input of this training
            key = f"{q}/{d}"
            if r["status"] != "ok" or r["grade"] is None:
                rejected.append({"key": key, "reason": f"no grade to learn from (status {r['status']}): a judgment "
                                 "that did not parse is never a training label"})
            elif not qtext.get(q):
                rejected.append({"key": key, "reason": f"query {q} has no text ({self._where('queries')})"})
            elif not dtext.get(d):
                rejected.append({"key": key, "reason": f"document {d} has no text ({self._where('docs')})"})
            else:
                rows.append({UNIT: key, KEY: key, "query_id": q, "doc_id": d, "query_text": qtext[q],
                             "doc_text": dtext[d], "grade": min(3, max(0, int(r["grade"])))})
        return Units(pa.Table.from_pylist(rows, schema=UNIT_SCHEMA), rejected)

    def _where(self, kind: str) -> str:
        f = self.params.get(kind)
        return f"not in {Path(f).name}" if f else "not in the catalog; pass --queries/--docs files"

    def _texts(self, inputs) -> tuple[dict[str, str], dict[str, str]]:
        from tasks.corpus import document_texts
        from tasks.judge import trec_io
        from tasks.judge.pools import read_passages

        p = self.params
        if p.get("queries"):
            t = trec_io.read_topics(p["queries"]).table
        elif "queries" in inputs:
            t = inputs["queries"]
        elif self.config.negatives.queries_file:
            t = trec_io.read_topics(self.config.resolve(self.config.negatives.queries_file)).table
        else:
            t = pa.table({"query_id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
        qtext = dict(zip(t["query_id"].to_pylist(), t["text"].to_pylist()))
        if p.get("docs"):
            return qtext, {d: x for d, x in read_passages(p["docs"]).items() if x}
        dtext: dict[str, str] = {}
        if "documents" in inputs:
            docs = inputs["documents"]
            texts = document_texts(docs, inputs.get("captions"))
            dtext = dict(texts)
            if "source_id" in docs.column_names:  # labels may name documents by the sources' own ids
                for d, s in zip(docs["doc_id"].to_pylist(), docs["source_id"].to_pylist()):
                    if s is not None and s not in dtext:
                        dtext[s] = texts.get(d, "")
        return qtext, dtext

    def assemble(self, inputs, units: pa.Table, results) -> Assembled:
        judge = inputs[label_set(self.params["labels"])]["judge"]
        source = judge[0].as_py() if len(judge) else self.params["labels"]
        table = pa.table({"query_id": units["query_id"], "doc_id": units["doc_id"],
                          "judge": pa.array([source] * units.num_rows, pa.string()), "grade": units["grade"]})
        fp = self.fingerprint()
        out_name = self.outputs()[0]
        identity = {"fingerprint": fp}
        produced = units[UNIT].to_pylist()
        previous = inputs.previous_ref(out_name)
        notes = {"model": self.model_name, "labels": source, "split": self.params["split"], "pairs": units.num_rows}
        if previous is not None and inputs.meta(previous).get("fingerprint") == fp and \
                _same_rows(inputs.previous(out_name), conform(out_name, table)):
            # the same settings on the same labels: publish finds it unchanged and keeps the model
            return Assembled({out_name: Output(table, identity=identity)}, produced, notes=notes | {"trained": False})
        if units.num_rows == 0:
            raise ValueError(f"no usable training labels in '{self.params['labels']}' for split "
                             f"'{self.params['split']}' (see the quarantine for why each was rejected)")
        folder = Path(tempfile.mkdtemp(prefix="corpusforge-judge-model-"))
        info = {"label_set": source, "split": self.params["split"], "name": self.model_name}
        manifest = self._train(inputs, units, folder, info)
        files = {f"{MODEL_DIR}/{f.relative_to(folder).as_posix()}": str(f) for f in folder.rglob("*") if f.is_file()}
        meta = {"fingerprint": fp, "manifest": manifest, "files": sorted(files)}
        return Assembled({out_name: Output(table, attachments=files, meta=meta, identity=identity)}, produced,
                         model_calls=units.num_rows, notes=notes | {"trained": True, "manifest": manifest})

    def _train(self, inputs, units: pa.Table, folder: Path, info: dict) -> dict:
        """Train the configured kind of judge into `folder`; returns its manifest. Either way the
        manifest carries the grade cutpoints fitted on the training pairs (tasks.judge.features)."""
        training = self.cfg.training
        if training.kind == "features":
            from tasks.judge.features import train_features

            o = self.cfg.offline
            cos = _cosines(inputs, units, o.encoder)
            _, dtext = self._texts(inputs)  # the corpus the BM25 statistics are frozen from
            return train_features(units, cos, list(dtext.values()), folder, o.encoder.model_dump(mode="json"),
                                  info | {"kind": "features"})
        cos = _cosines(inputs, units, self.cfg.offline.encoder) if training.prior == "cosine" else None
        prior, logp = cosine_prior(cos, self.cfg) if cos is not None else (None, None)
        device = self._device()
        manifest = train_cross_encoder(units, folder, training, device, info=info | {"kind": "cross_encoder"},
                                       prior_logp=logp, prior=prior)
        return with_decision(folder, units, manifest, device, self.cfg, cos)

    def _device(self) -> str:
        want = self.cfg.training.device
        if want != "auto":
            return want
        import torch

        return "cuda" if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") != "" else "cpu"

    def report(self, outcome) -> None:
        from tasks.runtime.prefect_support import run_logger

        n = outcome.notes
        m = n.get("manifest") or {}
        run_logger().info("train_judge %s: %d pairs from %s (%s split), %s", n.get("model"), n.get("pairs", 0),
                          n.get("labels"), n.get("split"),
                          f"trained in {m.get('seconds')}s" + (f", loss {m['train_loss']:.4f}" if m.get("train_loss")
                                                               is not None else "") if n.get("trained")
                          else "unchanged (same labels and settings)")


def _cosines(inputs, units: pa.Table, encoder) -> "np.ndarray":
    """The training pairs' cosines under `encoder` (from the embed cache where it has them)."""
    from tasks.judge.pools import with_cosines

    table = units.append_column("cosine", pa.nulls(units.num_rows, pa.float32())) if "cosine" not in \
        units.column_names else units
    return with_cosines(inputs, table, encoder)["cosine"].to_numpy(zero_copy_only=False)


def with_decision(folder: Path, units: pa.Table, manifest: dict, device: str, cfg, cosines) -> dict:
    """Grade the training pairs with the trained cross-encoder and store the grade cutpoints that
    give them the training labels' distribution (argmax p_grade rarely picks a middle grade)."""
    import json

    import numpy as np

    from tasks.judge.cross_encoder import MANIFEST, CrossEncoderGrader
    from tasks.judge.features import decision_cuts, expected_grade

    grader = CrossEncoderGrader(str(folder), device, cfg.training.max_length, max(cfg.batch_size, 32))
    docs = [(d or "")[: cfg.max_doc_chars] for d in units["doc_text"].to_pylist()]
    p = grader.p_grade(units["query_text"].to_pylist(), docs, cosines)
    manifest = manifest | {"decision": {"cuts": decision_cuts(expected_grade(p), units["grade"].to_numpy())}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def cosine_prior(cos, cfg) -> tuple[dict, "np.ndarray"]:
    """The offline cosine judge's log p_grade on the training pairs' cosines, and its description,
    which the trained judge keeps to apply the same prior when it grades."""
    import numpy as np

    from tasks.backends.embedders import text_space
    from tasks.judge.offline_judge import grade_probabilities

    o = cfg.offline
    prior = {"kind": "offline-cosine", "encoder": o.encoder.model_dump(mode="json"), "space": text_space(o.encoder),
             "thresholds": list(o.thresholds), "temperature": o.temperature}
    return prior, np.log(np.clip(grade_probabilities(cos, o.thresholds, o.temperature), 1e-6, 1.0))


def _same_rows(a: pa.Table | None, b: pa.Table) -> bool:
    """The same training labels, whatever their order (the label table is small)."""
    if a is None or a.num_rows != b.num_rows:
        return False
    keys = [("query_id", "ascending"), ("doc_id", "ascending")]
    return a.select(b.column_names).cast(b.schema).sort_by(keys).equals(b.sort_by(keys))
