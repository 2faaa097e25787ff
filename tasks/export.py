"""Exports: training corpora in the formats trainers read, each in a versioned directory with a
dataset card (counts, the dataset versions it came from, configs, licences of the sources).

- flagembedding: JSONL rows {query, pos, neg, pos_scores, neg_scores, prompt, type};
- sentence-transformers: Parquet with anchor, positive, negative_1..n (+ optional `scores`),
  loadable with `datasets.load_dataset("parquet", data_files=...)`;
- mbeir: M-BEIR-style queries JSONL (qid, query_txt, query_img_path, query_modality,
  pos_cand_list, neg_cand_list) plus a candidate pool (did, txt, img_path, modality) and images;
- trec: qrels per judge (and the mined positives) and runs per retriever;
- parquet: every current dataset of the catalog.

A directory is written under a temporary name and renamed when complete, so a reader never sees
half an export.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.config import ExportConfig
from tasks.runtime.catalog import Catalog, DatasetVersion, now
from tasks.runtime.publish import read
from tasks.runtime.storage import DataRoot

log = logging.getLogger(__name__)

FORMATS = ("flagembedding", "sentence-transformers", "mbeir", "trec", "parquet")
NEEDS_NEGATIVES = {"flagembedding", "sentence-transformers", "mbeir"}
MBEIR_MODALITY = {"text": "text", "image": "image", "interleaved": "image,text"}
QUERY_MODALITY = {"text": "text", "image": "image", "text+image": "image,text"}


@dataclass
class Sources:
    """The current datasets an export reads, with their catalog versions."""

    catalog: Catalog
    root: DataRoot
    refs: dict[str, DatasetVersion] = field(default_factory=dict)
    _cache: dict[str, pa.Table] = field(default_factory=dict)

    @classmethod
    def open(cls, catalog: Catalog, root: DataRoot) -> "Sources":
        rows = catalog.query("SELECT name, version, path, row_count, content_hash FROM datasets WHERE is_current "
                             "ORDER BY name").to_pylist()
        return cls(catalog, root, {r["name"]: DatasetVersion(**r) for r in rows})

    def table(self, name: str) -> pa.Table | None:
        if name not in self.refs:
            return None
        if name not in self._cache:
            self._cache[name] = read(self.catalog, self.root, name)
        return self._cache[name]


def doc_texts(documents: pa.Table, captions: pa.Table | None) -> dict[str, str]:
    """A text per document for text-only trainers: its own text, else a model caption, else alt-text."""
    out = {d: t for d, t in zip(documents["doc_id"].to_pylist(), documents["text"].to_pylist()) if t}
    best: dict[str, tuple[int, str]] = {}
    if captions is not None:
        for d, t, src in zip(captions["doc_id"].to_pylist(), captions["text"].to_pylist(),
                             captions["source"].to_pylist()):
            rank = 0 if src == "model" else 1
            if d not in out and t and (d not in best or rank < best[d][0]):
                best[d] = (rank, t)
    for d, a in zip(documents["doc_id"].to_pylist(), documents["alt_text"].to_pylist()):
        if d not in out and d not in best and a:
            best[d] = (2, a)
    return out | {d: t for d, (_, t) in best.items()}


@dataclass
class Grouped:
    """Negatives grouped per query: positives and negatives in rank order, with scores."""

    query_id: str
    query_text: str
    positives: list[tuple[str, float | None]]
    negatives: list[tuple[str, float]]


def group_negatives(negatives: pa.Table) -> list[Grouped]:
    t = negatives.sort_by([("query_id", "ascending"), ("rank", "ascending"), ("pos_doc_id", "ascending")])
    out: dict[str, Grouped] = {}
    for q, qt, p, ps, n, ns in zip(*(t[c].to_pylist() for c in
                                     ("query_id", "query_text", "pos_doc_id", "pos_score", "neg_doc_id", "score"))):
        g = out.setdefault(q, Grouped(q, qt or "", [], []))
        if p not in {x for x, _ in g.positives}:
            g.positives.append((p, ps))
        if n not in {x for x, _ in g.negatives}:
            g.negatives.append((n, ns))
    for g in out.values():
        g.positives.sort(key=lambda x: (-(x[1] if x[1] is not None else float("-inf")), x[0]))
    return list(out.values())


def _query_texts(src: Sources, groups: list[Grouped]) -> None:
    queries = src.table("queries")
    if queries is None:
        return
    texts = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist()))
    for g in groups:
        g.query_text = g.query_text or texts.get(g.query_id, "")


# ---- writers ------------------------------------------------------------------------------------
def write_flagembedding(groups: list[Grouped], texts: dict[str, str], out: Path, cfg: ExportConfig) -> dict:
    """FlagEmbedding fine-tuning JSONL; documents without any text are left out and counted."""
    rows = skipped_docs = 0
    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for g in groups:
            pos = [(texts[d], s) for d, s in g.positives if d in texts]
            neg = [(texts[d], s) for d, s in g.negatives if d in texts]
            skipped_docs += len(g.positives) + len(g.negatives) - len(pos) - len(neg)
            if not pos or not g.query_text:
                continue
            f.write(json.dumps({"query": g.query_text, "pos": [t for t, _ in pos], "neg": [t for t, _ in neg],
                                "pos_scores": [s for _, s in pos], "neg_scores": [s for _, s in neg],
                                "prompt": cfg.prompt, "type": cfg.task_type}, ensure_ascii=False) + "\n")
            rows += 1
    return {"rows": rows, "documents_without_text": skipped_docs, "files": ["train.jsonl"]}


def write_sentence_transformers(negatives: pa.Table, texts: dict[str, str], out: Path, cfg: ExportConfig,
                                query_text: dict[str, str]) -> dict:
    """(anchor, positive, negative_1..n) rows, one per (query, positive); rows short of n negatives
    with text are dropped and counted, as sentence-transformers' n-tuple format does."""
    t = negatives.sort_by([("query_id", "ascending"), ("pos_doc_id", "ascending"), ("rank", "ascending")])
    tuples: dict[tuple[str, str], list] = {}
    for q, p, ps, n, ns in zip(*(t[c].to_pylist() for c in ("query_id", "pos_doc_id", "pos_score", "neg_doc_id", "score"))):
        e = tuples.setdefault((q, p), [ps, []])
        if n in texts:
            e[1].append((texts[n], ns))
    counts = [len(v[1]) for v in tuples.values()]
    n = cfg.num_negatives or (max(set(counts), key=counts.count) if counts else 1)
    cols: dict[str, list] = {"anchor": [], "positive": [], **{f"negative_{i}": [] for i in range(1, n + 1)}}
    scores: list[list[float | None]] = []
    dropped = 0
    for (q, p), (ps, negs) in tuples.items():
        if len(negs) < n or p not in texts or not query_text.get(q):
            dropped += 1
            continue
        cols["anchor"].append(query_text[q])
        cols["positive"].append(texts[p])
        for i, (txt, _) in enumerate(negs[:n], 1):
            cols[f"negative_{i}"].append(txt)
        scores.append([ps] + [s for _, s in negs[:n]])
    table = pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})
    if cfg.scores:
        table = table.append_column("scores", pa.array(scores, pa.list_(pa.float32())))
    (out / "data").mkdir()
    pq.write_table(table, out / "data" / "train-00000-of-00001.parquet")
    return {"rows": table.num_rows, "num_negatives": n, "rows_dropped_short": dropped,
            "columns": table.column_names, "files": ["data/train-00000-of-00001.parquet"]}


def write_mbeir(groups: list[Grouped], documents: pa.Table, texts: dict[str, str], out: Path, cfg: ExportConfig,
                corpus_root: Path | None, query_modality: dict[str, str]) -> dict:
    """M-BEIR-style queries and candidate pool; images are copied (or linked) under images/."""
    (out / "images").mkdir()
    images = copied = missing = 0
    with open(out / "candidates.jsonl", "w", encoding="utf-8") as f:
        for d, m, uri in zip(documents["doc_id"].to_pylist(), documents["modality"].to_pylist(),
                             documents["image_uri"].to_pylist()):
            img = None
            if uri:
                images += 1
                img = f"images/{uri}"
                src = (corpus_root / uri) if corpus_root else None
                if src is not None and src.exists():
                    (out / img).parent.mkdir(parents=True, exist_ok=True)
                    if cfg.images == "link":
                        os.symlink(src.resolve(), out / img)
                    else:
                        shutil.copyfile(src, out / img)
                    copied += 1
                else:
                    missing += 1
            f.write(json.dumps({"did": d, "txt": texts.get(d) if m != "image" else None, "img_path": img,
                                "modality": MBEIR_MODALITY.get(m, m)}, ensure_ascii=False) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
        for g in groups:
            f.write(json.dumps({"qid": g.query_id, "query_txt": g.query_text, "query_img_path": None,
                                "query_modality": "text", "target_modality": query_modality.get(g.query_id),
                                "pos_cand_list": [d for d, _ in g.positives],
                                "neg_cand_list": [d for d, _ in g.negatives]}, ensure_ascii=False) + "\n")
    return {"queries": len(groups), "candidates": documents.num_rows, "images": images, "images_written": copied,
            "images_missing": missing, "files": ["queries.jsonl", "candidates.jsonl", "images/"]}


def write_trec(src: Sources, out: Path) -> dict:
    """qrels per judge (plus the mined positives) and one run per retriever of every candidates table."""
    from tasks.judgments.trec_io import write_qrels, write_run

    (out / "qrels").mkdir()
    (out / "runs").mkdir()
    files, counts = [], {}
    judgments = src.table("judgments")
    if judgments is not None:
        ok = judgments.filter(pc.is_valid(judgments["grade"]))
        for judge in sorted(set(ok["judge"].to_pylist())):
            t = ok.filter(pc.equal(ok["judge"], judge))
            name = f"qrels/{_slug(judge)}.txt"
            counts[name] = write_qrels(pa.table({"query_id": t["query_id"], "doc_id": t["doc_id"],
                                                 "relevance": t["grade"]}), out / name)
            files.append(name)
    negatives = src.table("negatives")
    if negatives is not None and negatives.num_rows:
        pairs = negatives.group_by(["query_id", "pos_doc_id"]).aggregate([])
        counts["qrels/positives.txt"] = write_qrels(pa.table({
            "query_id": pairs["query_id"], "doc_id": pairs["pos_doc_id"],
            "relevance": pa.array([1] * pairs.num_rows, pa.int32())}), out / "qrels/positives.txt")
        files.append("qrels/positives.txt")
    for name in sorted(n for n in src.refs if n.split("/", 1)[0] == "candidates"):
        t = src.table(name)
        for retriever in sorted(set(t["retriever"].to_pylist())):
            r = t.filter(pc.equal(t["retriever"], retriever))
            fname = f"runs/{_slug(name.replace('/', '__'))}.{_slug(retriever)}.txt"
            counts[fname] = write_run(r.select(["query_id", "doc_id", "score"]), out / fname, tag=_slug(retriever))
            files.append(fname)
    return {"rows": counts, "files": files}


def write_parquet(src: Sources, out: Path) -> dict:
    counts = {}
    for name in sorted(src.refs):
        fname = f"{name.replace('/', '__')}.parquet"
        table = src.table(name)
        pq.write_table(table, out / fname, compression="zstd")
        counts[fname] = table.num_rows
    return {"rows": counts, "files": sorted(counts)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


# ---- the card -----------------------------------------------------------------------------------
def lineage_versions(catalog: Catalog, names: list[str]) -> list[dict]:
    """The exported datasets and all their ancestors, with versions, rows and content hashes."""
    seen: set[tuple[str, int]] = set()
    for name in names:
        cur = catalog.current(name)
        if cur is None:
            continue
        seen.add((name, cur.version))
        for e in catalog.lineage(name, cur.version).to_pylist():
            seen.add((e["parent_name"], e["parent_version"]))
    rows = []
    for name, version in sorted(seen):
        r = catalog.query("SELECT name, version, row_count, content_hash, created_at, run_id, stage FROM datasets "
                          "WHERE name = ? AND version = ?", [name, version]).to_pylist()
        if r:
            rows.append(r[0] | {"content_hash": r[0]["content_hash"][:16], "created_at": str(r[0]["created_at"])})
    return rows


def source_licences(documents: pa.Table | None, configured: dict[str, str]) -> list[dict]:
    """Licences per input source: those the documents carry (meta.license), plus configured ones."""
    found: dict[str, dict[str, int]] = {}
    if documents is not None:
        for src, meta in zip(documents["source"].to_pylist(), documents["meta"].to_pylist()):
            lic = None
            if meta:
                try:
                    lic = (json.loads(meta) or {}).get("license")
                except (ValueError, AttributeError):
                    lic = None
            lic = lic or configured.get(src) or "unknown: set export.licenses in the config"
            found.setdefault(src, {})
            found[src][lic] = found[src].get(lic, 0) + 1
    for src, lic in configured.items():
        found.setdefault(src, {}).setdefault(lic, 0)
    return [{"source": s, "licence": lic, "documents": n} for s, lics in sorted(found.items())
            for lic, n in sorted(lics.items())]


def run_configs(catalog: Catalog, refs: list[DatasetVersion]) -> dict:
    """The config sections of the runs that produced the exported datasets, once per run."""
    out: dict[str, dict] = {}
    for ref in refs:
        row = catalog.query("SELECT r.run_id, r.config_json FROM datasets d JOIN runs r USING (run_id) "
                            "WHERE d.name = ? AND d.version = ?", [ref.name, ref.version]).to_pylist()
        if not row or not row[0]["config_json"]:
            continue
        run = out.get(f"run {row[0]['run_id']}")
        if run is None:
            try:
                cfg = json.loads(row[0]["config_json"])
            except ValueError:
                continue
            run = out[f"run {row[0]['run_id']}"] = {"datasets": []} | {
                k: cfg[k] for k in ("name", "embed", "index", "negatives", "queries", "caption", "judge") if k in cfg}
        run["datasets"].append(ref.ref)
    return out


def card_markdown(card: dict) -> str:
    lic = sorted({r["licence"] for r in card["licences"]})
    lines = ["---", f"pretty_name: {card['name']} ({card['format']})", "license: other",
             "license_name: " + json.dumps("; ".join(lic)),
             "tags: [corpusforge, retrieval, hard-negatives]", "---", "",
             f"# {card['name']}: {card['format']} export v{card['version']}", "",
             f"Written by corpusforge at {card['created_at']} from catalog `{card['catalog']}`.", "",
             "## Counts", ""]
    lines += [f"- {k}: {v}" for k, v in card["counts"].items() if not isinstance(v, (list, dict))]
    for k, v in card["counts"].items():
        if isinstance(v, dict):
            lines += [f"- {k}:"] + [f"  - {kk}: {vv}" for kk, vv in v.items()]
    lines += ["", "## Source datasets (catalog versions and lineage)", "",
              "| dataset | version | rows | content hash | created |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | v{r['version']} | {r['row_count']} | {r['content_hash']} | {r['created_at']} |"
              for r in card["sources"]]
    lines += ["", "## Licences of the sources", "", "| source | licence | documents |", "|---|---|---|"]
    lines += [f"| {r['source']} | {r['licence']} | {r['documents']} |" for r in card["licences"]]
    lines += ["", "## Configuration", "", "```json", json.dumps(card["configs"], indent=2, default=str), "```", ""]
    return "\n".join(lines)


# ---- the export ---------------------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    card: dict


def next_version(out: Path, stem: str) -> int:
    found = [int(m.group(1)) for p in out.glob(f"{stem}-v*") if (m := re.fullmatch(rf"{re.escape(stem)}-v(\d+)", p.name))]
    return max(found, default=0) + 1


def export(catalog: Catalog, root: DataRoot, fmt: str, out: str | Path, cfg: ExportConfig | None = None, *,
           name: str = "corpus", corpus_root: Path | None = None) -> ExportResult:
    """Write one format to OUT/<name>-<format>-v<N>/ with README.md (the card) and card.json."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    cfg = cfg or ExportConfig()
    src = Sources.open(catalog, root)
    if fmt in NEEDS_NEGATIVES and "negatives" not in src.refs:
        raise LookupError(f"the {fmt} export needs mined negatives, and the catalog has none: run "
                          "`corpusforge build` with queries (or `corpusforge mine --config FILE`) first")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{fmt}"
    tmp = out / f".tmp-{stem}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        used = _write(fmt, src, tmp, cfg, corpus_root)
        version = next_version(out, stem)
        card = {
            "name": name, "format": fmt, "version": version, "created_at": str(now()), "catalog": catalog.path,
            "counts": used["counts"], "files": used["counts"].get("files", []),
            "sources": lineage_versions(catalog, used["datasets"]),
            "licences": source_licences(src.table("documents"), cfg.licenses),
            "configs": {"export": cfg.model_dump(mode="json")} | run_configs(
                catalog, [src.refs[n] for n in used["datasets"] if n in src.refs]),
        }
        (tmp / "card.json").write_text(json.dumps(card, indent=2, default=str))
        (tmp / "README.md").write_text(card_markdown(card))
        final = out / f"{stem}-v{version}"
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if card["counts"].get("images_missing"):
        log.warning("export %s: %d images not found (pass the build config so the corpus root is known)",
                    fmt, card["counts"]["images_missing"])
    log.info("export %s written to %s", fmt, final)
    return ExportResult(final, card)


def _write(fmt: str, src: Sources, out: Path, cfg: ExportConfig, corpus_root: Path | None) -> dict:
    if fmt == "parquet":
        return {"counts": write_parquet(src, out), "datasets": sorted(src.refs)}
    if fmt == "trec":
        used = [n for n in src.refs if n == "judgments" or n == "negatives" or n.startswith("candidates")]
        return {"counts": write_trec(src, out), "datasets": used}
    negatives = src.table("negatives")
    documents = src.table("documents")
    texts = doc_texts(documents, src.table("captions"))
    groups = group_negatives(negatives)
    _query_texts(src, groups)
    used = [n for n in ("negatives", "documents", "captions", "queries") if n in src.refs]
    if fmt == "flagembedding":
        counts = write_flagembedding(groups, texts, out, cfg)
    elif fmt == "sentence-transformers":
        counts = write_sentence_transformers(negatives, texts, out, cfg, {g.query_id: g.query_text for g in groups})
    else:
        queries = src.table("queries")
        qmod = dict(zip(queries["query_id"].to_pylist(), queries["target_modality"].to_pylist())) if queries else {}
        counts = write_mbeir(groups, documents, texts, out, cfg, corpus_root, qmod)
    counts["queries"] = counts.get("queries", len(groups))
    counts["negatives_rows"] = negatives.num_rows
    return {"counts": counts, "datasets": used}
