"""The export stage: a training corpus in one format, in a versioned directory with a dataset card.

Units are what the format writes one of (a query, a (query, positive) tuple, a dataset); a unit
the format cannot write (no text, too few negatives) is quarantined with the reason. The folder
is written under a temporary name and renamed when complete, so a reader never sees half an
export; the stage publishes no dataset, but its run and counts are recorded like any other.
"""
from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import pyarrow as pa

from tasks.corpus import document_texts
from tasks.export.card import card_markdown, lineage_versions, next_version, run_configs, source_licences
from tasks.export.formats import (ExportRefused, group_negatives, st_tuples, write_flagembedding, write_mbeir,
                                  write_parquet, write_sentence_transformers, write_trec)
from tasks.runtime.catalog import now
from tasks.runtime.stage import KEY, UNIT, Assembled, Read, Stage, Units, optional

log = logging.getLogger(__name__)

FORMATS = ("flagembedding", "sentence-transformers", "mbeir", "trec", "parquet")
NEEDS_NEGATIVES = {"flagembedding", "sentence-transformers", "mbeir"}


class Export(Stage):
    name = "export"
    section = "export"
    description = "training corpora (FlagEmbedding, sentence-transformers, M-BEIR, TREC, Parquet) with a card"

    def __init__(self, config, **params):
        super().__init__(config, **params)
        fmt = params.get("format")
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")

    @property
    def format(self) -> str:
        return self.params["format"]

    @property
    def negatives(self) -> str:
        return self.params.get("negatives") or "negatives"

    def inputs(self) -> tuple[Read, ...]:
        if self.format == "parquet":
            return (Read("*"),)
        if self.format == "trec":
            return (optional("judgments/*"), optional(self.negatives), optional("candidates/*"),
                    optional("documents"))  # documents: the licences on the card
        return (optional(self.negatives), optional("documents"), optional("captions"), optional("queries"))

    def units(self, inputs) -> Units:
        if self.format in NEEDS_NEGATIVES:
            if self.negatives not in inputs:
                raise LookupError(f"the {self.format} export needs mined negatives, and the catalog has none: run "
                                  "`corpusforge build` with queries (or `corpusforge mine --config FILE`) first")
            neg = inputs[self.negatives]
            if self.format == "sentence-transformers":
                pairs = neg.group_by(["query_id", "pos_doc_id"]).aggregate([])
                ids = [f"{q}/{p}" for q, p in zip(pairs["query_id"].to_pylist(), pairs["pos_doc_id"].to_pylist())]
            else:
                ids = sorted(set(neg["query_id"].to_pylist()))
        else:
            ids = [n for n in inputs.matching("") if self.format == "parquet" or n != "documents"]
        ids = pa.array(ids, pa.string())
        return Units(pa.table({UNIT: ids, KEY: ids}))

    def assemble(self, inputs, units: pa.Table, results) -> Assembled:
        cfg, fmt = self.cfg, self.format
        out = Path(self.params.get("out") or self.config.resolve(cfg.out))
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.params.get('name') or self.config.name}-{fmt}"
        tmp = out / f".tmp-{stem}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            written, used = self._write(inputs, tmp)
            refuse_empty(fmt, written)
            version = next_version(out, stem)
            refs = [inputs.ref(n) for n in used if inputs.ref(n) is not None]
            catalog = inputs.run.catalog
            card = {
                "name": self.params.get("name") or self.config.name, "format": fmt, "version": version,
                "created_at": str(now()), "catalog": catalog.path, "counts": written.counts,
                "files": written.counts.get("files", []), "sources": lineage_versions(catalog, used),
                "licences": source_licences(inputs.get("documents"), cfg.licenses),
                "run_configs": {"export": cfg.model_dump(mode="json")} | run_configs(catalog, refs),
            }
            (tmp / "card.json").write_text(json.dumps(card, indent=2, default=str))
            (tmp / "README.md").write_text(card_markdown(card))
            final = out / f"{stem}-v{version}"
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Assembled({}, written.written, written.skipped, notes={"path": str(final), "card": card})

    def _write(self, inputs, out: Path):
        fmt, cfg = self.format, self.cfg
        if fmt == "parquet":
            tables = {n: inputs[n] for n in inputs.matching("")}
            return write_parquet(tables, out), sorted(tables)
        if fmt == "trec":
            tables = {n: inputs[n] for n in inputs.matching("") if n != "documents"}
            written = write_trec(tables, out, self.negatives, inputs.get("documents"))
            return written, sorted(written.written) + (["documents"] if "documents" in inputs else [])
        negatives, documents = inputs[self.negatives], inputs["documents"]
        texts = {d: t for d, t in document_texts(documents, inputs.get("captions")).items() if t}
        queries = inputs.get("queries")
        qtext = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist())) if queries is not None else {}
        groups = group_negatives(negatives, qtext)
        used = [n for n in (self.negatives, "documents", "captions", "queries") if n in inputs]
        if fmt == "flagembedding":
            written = write_flagembedding(groups, texts, out, cfg)
        elif fmt == "sentence-transformers":
            written = write_sentence_transformers(st_tuples(negatives, texts), texts, out, cfg,
                                                  {g.query_id: g.query_text for g in groups})
        else:
            written = write_mbeir(groups, documents, texts, out, cfg, corpus_root(self.config, inputs.run.catalog),
                                  self.params.get("name") or self.config.name)
        written.counts["queries"] = written.counts.get("queries", len(groups))
        written.counts["negatives_rows"] = negatives.num_rows
        return written, used

    def report(self, outcome) -> None:
        from tasks.runtime.prefect_support import run_logger

        run_logger().info("export %s -> %s", self.format, outcome.notes.get("path"))


def refuse_empty(fmt: str, written) -> None:
    """An export that would write nothing fails, with the most common reason and what to change."""
    c = written.counts
    empty = not c.get("files") if fmt == "trec" else (c.get("queries") if fmt == "mbeir" else c.get("rows")) == 0
    if fmt == "parquet" or not empty:
        return
    reasons: dict[str, int] = {}
    for s in written.skipped:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    top = max(reasons.items(), key=lambda x: x[1]) if reasons else None
    why = f": {top[0]} ({top[1]} of {len(written.skipped)} left out)" if top else ""
    remedy = {"trec": "import qrels (`corpusforge import-qrels`) or mine negatives for this corpus first",
              "sentence-transformers": "pass a smaller --num-negatives, or mine more (negatives.num_negatives)"}
    raise ExportRefused(f"the {fmt} export would write 0 rows{why}; "
                        f"{remedy.get(fmt, 'check the negatives and queries of this catalog')}")


def corpus_root(config, catalog) -> Path | None:
    """Where the images are: the config's corpus root, else the one the documents' ingest run recorded."""
    if config.corpus is not None:
        return config.corpus_root
    rows = catalog.query("SELECT r.config_json FROM datasets d JOIN runs r USING (run_id) "
                         "WHERE d.name = 'documents' AND d.is_current").to_pylist()
    try:
        root = json.loads(rows[0]["config_json"])["corpus"]["root"] if rows and rows[0]["config_json"] else None
    except (ValueError, KeyError, TypeError):
        root = None
    return Path(root) if root and Path(root).is_absolute() and Path(root).is_dir() else None
