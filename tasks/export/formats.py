"""The writers: one function per export format. Each writes into a folder and says which units it
wrote and why it left any out, so the export stage accounts for every unit.

- flagembedding: JSONL rows {query, pos, neg, pos_scores, neg_scores, prompt, type} (one per query);
- sentence-transformers: Parquet with anchor, positive, negative_1..n (+ optional `scores`), one
  row per (query, positive), loadable with `datasets.load_dataset("parquet", data_files=...)`, and a
  dev split of held-out queries (queries, corpus, qrels) for InformationRetrievalEvaluator;
- mbeir: TIGER-Lab/UniIR's M-BEIR layout: query/<split>/, cand_pool/local/, qrels/<split>/ (5 columns),
  instructions/query_instructions.tsv, ids "<dataset_id>:<n>" and images under images/;
- trec: qrels per judge (and the mined positives) and runs per retriever, for this corpus's documents;
- parquet: every current dataset of the catalog.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.config import ExportConfig

log = logging.getLogger(__name__)

MBEIR_MODALITY = {"text": "text", "image": "image", "interleaved": "image,text"}
# UniIR's task ids (src/data/preprocessing/utils.py: MBEIR_TASK), "query -> candidate" modality
MBEIR_TASK = {"text -> image": 0, "text -> text": 1, "text -> image,text": 2, "image -> text": 3,
              "image -> image": 4, "image,text -> text": 6, "image,text -> image": 7, "image,text -> image,text": 8}
MBEIR_PROMPT = {"text": "Retrieve a passage that answers this question.",
                "image": "Retrieve an image that matches this description.",
                "image,text": "Retrieve an image with its caption that matches this description."}


class ExportRefused(ValueError):
    """An export that would be wrong or empty: the message says what to change."""


@dataclass
class Written:
    counts: dict
    written: list[str] = field(default_factory=list)  # unit ids
    skipped: list[dict] = field(default_factory=list)  # {key: unit id, reason}


@dataclass
class Grouped:
    """Negatives grouped per query: positives and negatives in rank order, with scores."""

    query_id: str
    query_text: str
    positives: list[tuple[str, float | None]]
    negatives: list[tuple[str, float]]


def group_negatives(negatives: pa.Table, query_texts: dict[str, str]) -> list[Grouped]:
    t = negatives.sort_by([("query_id", "ascending"), ("rank", "ascending"), ("pos_doc_id", "ascending")])
    out: dict[str, Grouped] = {}
    for q, qt, p, ps, n, ns in zip(*(t[c].to_pylist() for c in
                                     ("query_id", "query_text", "pos_doc_id", "pos_score", "neg_doc_id", "score"))):
        g = out.setdefault(q, Grouped(q, qt or query_texts.get(q, ""), [], []))
        if p not in {x for x, _ in g.positives}:
            g.positives.append((p, ps))
        if n not in {x for x, _ in g.negatives}:
            g.negatives.append((n, ns))
    for g in out.values():
        g.positives.sort(key=lambda x: (-(x[1] if x[1] is not None else float("-inf")), x[0]))
    return list(out.values())


def write_flagembedding(groups: list[Grouped], texts: dict[str, str], out: Path, cfg: ExportConfig) -> Written:
    """FlagEmbedding fine-tuning JSONL; documents without any text are left out and counted. `prompt`
    is written only when set, so FlagEmbedding's own query instruction applies otherwise."""
    w = Written({})
    skipped_docs = 0
    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for g in groups:
            pos = [(texts[d], s) for d, s in g.positives if texts.get(d)]
            neg = [(texts[d], s) for d, s in g.negatives if texts.get(d)]
            skipped_docs += len(g.positives) + len(g.negatives) - len(pos) - len(neg)
            if not pos or not g.query_text:
                w.skipped.append({"key": g.query_id, "reason": "no positive with text" if g.query_text
                                  else "the query has no text"})
                continue
            row = {"query": g.query_text, "pos": [t for t, _ in pos], "neg": [t for t, _ in neg],
                   "pos_scores": [s for _, s in pos], "neg_scores": [s for _, s in neg]}
            if cfg.prompt:  # an empty prompt would replace the query_instruction_for_retrieval of BGE recipes
                row["prompt"] = cfg.prompt
            row["type"] = cfg.task_type
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            w.written.append(g.query_id)
    w.counts = {"rows": len(w.written), "documents_without_text": skipped_docs, "files": ["train.jsonl"]}
    return w


def st_tuples(negatives: pa.Table, texts: dict[str, str]) -> dict[tuple[str, str], list]:
    """(query, positive) -> [positive score, [(negative text, score), ...] in rank order]."""
    t = negatives.sort_by([("query_id", "ascending"), ("pos_doc_id", "ascending"), ("rank", "ascending")])
    tuples: dict[tuple[str, str], list] = {}
    for q, p, ps, n, ns in zip(*(t[c].to_pylist() for c in ("query_id", "pos_doc_id", "pos_score", "neg_doc_id",
                                                              "score"))):
        e = tuples.setdefault((q, p), [ps, []])
        if texts.get(n):
            e[1].append((texts[n], ns))
    return tuples


def write_sentence_transformers(tuples: dict[tuple[str, str], list], texts: dict[str, str], out: Path,
                                cfg: ExportConfig, query_text: dict[str, str]) -> Written:
    """(anchor, positive, negative_1..n) rows, one per (query, positive); a tuple short of n
    negatives with text is left out with the reason, as sentence-transformers' n-tuple format does.
    A seeded share of the queries is held out as the dev split (`dev_split`), never trained on."""
    counts = [len(v[1]) for v in tuples.values()]
    n = cfg.num_negatives or (max(set(counts), key=counts.count) if counts else 1)
    cols: dict[str, list] = {"anchor": [], "positive": [], **{f"negative_{i}": [] for i in range(1, n + 1)}}
    scores: list[list[float | None]] = []
    w = Written({})
    dev = dev_queries(sorted({q for q, _ in tuples if query_text.get(q)}), cfg)
    dev_pairs: list[tuple[str, str]] = []
    for (q, p), (ps, negs) in tuples.items():
        uid = f"{q}/{p}"
        if not query_text.get(q) or not texts.get(p):
            w.skipped.append({"key": uid, "reason": "the query or its positive has no text"})
            continue
        if q in dev:
            dev_pairs.append((q, p))
            w.written.append(uid)
            continue
        if len(negs) < n:
            w.skipped.append({"key": uid, "reason": f"only {len(negs)} negatives with text, {n} asked "
                              "(lower export.num_negatives or mine more)"})
            continue
        cols["anchor"].append(query_text[q])
        cols["positive"].append(texts[p])
        for i, (txt, _) in enumerate(negs[:n], 1):
            cols[f"negative_{i}"].append(txt)
        scores.append([ps] + [s for _, s in negs[:n]])
        w.written.append(uid)
    table = pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})
    if cfg.scores:
        table = table.append_column("scores", pa.array(scores, pa.list_(pa.float32())))
    (out / "data").mkdir()
    pq.write_table(table, out / "data" / "train-00000-of-00001.parquet")
    files = ["data/train-00000-of-00001.parquet"]
    if dev_pairs:
        files += write_dev_split(dev_pairs, texts, query_text, out)
    w.counts = {"rows": table.num_rows, "num_negatives": n, "rows_dropped_short": len(w.skipped),
                "columns": table.column_names, "dev_queries": len({q for q, _ in dev_pairs}),
                "dev_relevant": len(dev_pairs), "dev_corpus": len(texts) if dev_pairs else 0, "files": files}
    return w


def dev_queries(query_ids: list[str], cfg: ExportConfig) -> set[str]:
    """The held-out queries: a share of them chosen by a hash of the id, so a refresh that adds
    queries keeps the earlier dev queries out of training."""
    import hashlib

    size = min(cfg.dev_max_queries, int(len(query_ids) * cfg.dev_fraction))
    return set(sorted(query_ids, key=lambda q: hashlib.sha256(q.encode()).hexdigest())[:size])


def write_dev_split(pairs: list[tuple[str, str]], texts: dict[str, str], query_text: dict[str, str],
                    out: Path) -> list[str]:
    """The dev split in the layout of the NanoBEIR / BEIR datasets on the Hub: `queries` and `corpus`
    (`_id`, `text`) and `qrels` (`query-id`, `corpus-id`, `score`). The corpus is every document with
    text, so InformationRetrievalEvaluator ranks the whole corpus, as retrieval will."""
    (out / "dev").mkdir()
    qids = sorted({q for q, _ in pairs})
    docs = sorted(texts)
    pq.write_table(pa.table({"_id": qids, "text": [query_text[q] for q in qids]}), out / "dev" / "queries.parquet")
    pq.write_table(pa.table({"_id": docs, "text": [texts[d] for d in docs]}), out / "dev" / "corpus.parquet")
    pairs = sorted(pairs)
    pq.write_table(pa.table({"query-id": [q for q, _ in pairs], "corpus-id": [p for _, p in pairs],
                             "score": pa.array([1] * len(pairs), pa.int32())}), out / "dev" / "qrels.parquet")
    return ["dev/queries.parquet", "dev/corpus.parquet", "dev/qrels.parquet"]


def read_dev_split(folder: str | Path) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, corpus, relevant_docs) of an export's dev split, as InformationRetrievalEvaluator takes them."""
    from datasets import load_dataset

    folder = Path(folder) / "dev"
    split = {n: load_dataset("parquet", data_files=str(folder / f"{n}.parquet"), split="train")
             for n in ("queries", "corpus", "qrels")}
    relevant: dict[str, set[str]] = {}
    for q, d in zip(split["qrels"]["query-id"], split["qrels"]["corpus-id"]):
        relevant.setdefault(q, set()).add(d)
    return (dict(zip(split["queries"]["_id"], split["queries"]["text"])),
            dict(zip(split["corpus"]["_id"], split["corpus"]["text"])), relevant)


def write_mbeir(groups: list[Grouped], documents: pa.Table, texts: dict[str, str], out: Path, cfg: ExportConfig,
                corpus_root: Path | None, name: str) -> Written:
    """UniIR's M-BEIR layout, readable by its MBEIRMainDataset and retriever unchanged. Images are
    copied (or linked) under images/; an export whose images cannot be found is refused."""
    dsid, split, stem = cfg.mbeir_dataset_id, cfg.mbeir_split, f"mbeir_{slug(name).lower()}"
    docs = documents.sort_by("doc_id")
    did = {d: f"{dsid}:{n}" for n, d in enumerate(docs["doc_id"].to_pylist(), 1)}
    uris = [u for u in docs["image_uri"].to_pylist() if u]
    if uris and corpus_root is None:
        raise ExportRefused(f"the M-BEIR export needs the {len(uris)} images, and the corpus root is unknown: "
                            "pass --config FILE (the build config of this catalog)")
    for sub in ("images", f"query/{split}", "cand_pool/local", f"qrels/{split}", "instructions"):
        (out / sub).mkdir(parents=True)
    modality: dict[str, str] = {}
    missing: list[str] = []
    with open(out / "cand_pool/local" / f"{stem}_cand_pool.jsonl", "w", encoding="utf-8") as f:
        for d, m, uri, src, sid in zip(*(docs[c].to_pylist() for c in ("doc_id", "modality", "image_uri", "source",
                                                                        "source_id"))):
            img = None
            if not uri and not texts.get(d):
                continue  # neither text nor image: nothing for a retriever to embed
            if uri:
                img = f"images/{uri}"
                source = _contained(corpus_root, uri)
                if source is None or not source.is_file():  # gone, or swapped for a link out of the corpus
                    missing.append(uri)
                    continue
                (out / img).parent.mkdir(parents=True, exist_ok=True)
                if cfg.images == "link":
                    os.symlink(source, out / img)
                else:
                    shutil.copyfile(source, out / img)
            modality[d] = MBEIR_MODALITY.get(m, m)
            f.write(json.dumps({"txt": texts.get(d) if m != "image" else None, "img_path": img,
                                "modality": modality[d], "did": did[d],
                                "src_content": json.dumps({"doc_id": d, "source": src, "source_id": sid})},
                               ensure_ascii=False) + "\n")
    if missing:
        raise ExportRefused(f"{len(missing)} of {len(uris)} images are not under {corpus_root} (first: {missing[0]}): "
                            "pass --config FILE of the build whose corpus.root holds them")
    w = Written({})
    tasks: set[tuple[int, str]] = set()
    n = 0
    with open(out / f"query/{split}" / f"{stem}_{split}.jsonl", "w", encoding="utf-8") as fq, \
            open(out / f"qrels/{split}" / f"{stem}_{split}_qrels.txt", "w", encoding="utf-8") as fr:
        for g in groups:
            pos = [d for d, _ in g.positives if d in modality]
            if not pos or not g.query_text:
                w.skipped.append({"key": g.query_id, "reason": "no positive in the candidate pool" if g.query_text
                                  else "the query has no text"})
                continue
            cand = modality[pos[0]]  # the task is text -> the modality of the positives
            pos = [d for d in pos if modality[d] == cand]
            task = MBEIR_TASK[f"text -> {cand}"]
            n += 1
            qid = f"{dsid}:{n}"
            fq.write(json.dumps({"qid": qid, "query_txt": g.query_text, "query_img_path": None,
                                 "query_modality": "text", "query_src_content": json.dumps({"query_id": g.query_id}),
                                 "pos_cand_list": [did[d] for d in pos],
                                 "neg_cand_list": [did[d] for d, _ in g.negatives if d in modality],
                                 "task_id": task}, ensure_ascii=False) + "\n")
            fr.writelines(f"{qid} 0 {did[d]} 1 {task}\n" for d in pos)
            tasks.add((task, cand))
            w.written.append(g.query_id)
    with open(out / "instructions" / "query_instructions.tsv", "w", encoding="utf-8") as f:
        f.write("query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n")
        for _, cand in sorted(tasks):
            f.write(f"text\t{cand}\t{name}\t{dsid}\t{cfg.prompt or MBEIR_PROMPT[cand]}\n")
    images = len(uris)
    w.counts = {"queries": len(w.written), "candidates": docs.num_rows, "images": images, "images_written": images,
                "dataset_id": dsid, "split": split,
                "files": [f"query/{split}/{stem}_{split}.jsonl", f"cand_pool/local/{stem}_cand_pool.jsonl",
                          f"qrels/{split}/{stem}_{split}_qrels.txt", "instructions/query_instructions.tsv", "images/"]}
    return w


def in_corpus(table: pa.Table, documents: pa.Table | None, column: str = "doc_id") -> pa.Table:
    """The rows about this corpus's documents (by doc_id or source id); all rows without documents."""
    if documents is None:
        return table
    ids = pa.array(sorted(set(documents["doc_id"].to_pylist()) | {s for s in documents["source_id"].to_pylist() if s}),
                   pa.string())
    return table.filter(pc.is_in(table[column], value_set=ids))


def _contained(corpus_root: Path | None, uri: str) -> Path | None:
    """The real path of a document image, only while it is still inside the corpus root: an image
    swapped for a link to a host file after ingest is not exported (it counts as missing)."""
    from tasks.ingest.checks import Rejected, resolve_inside

    if corpus_root is None:
        return None
    try:
        return resolve_inside(corpus_root, uri)
    except Rejected as e:
        log.warning("export: image %s not written: %s", uri, e)
        return None


def write_trec(tables: dict[str, pa.Table], out: Path, negatives: str, documents: pa.Table | None = None) -> Written:
    """qrels per judge (plus the mined positives) and one run per retriever of every candidates table;
    documents are named by their sources' own ids where they have one (users' qrels score as they are)."""
    from tasks.judge.trec_io import source_names, write_qrels, write_run

    names = source_names(documents)
    (out / "qrels").mkdir()
    (out / "runs").mkdir()
    files, counts, used = [], {}, []
    for name in sorted(n for n in tables if n.startswith("judgments/")):
        ok = in_corpus(tables[name].filter(pc.is_valid(tables[name]["grade"])), documents)
        if ok.num_rows:
            used.append(name)
        for judge in sorted(set(ok["judge"].to_pylist())):
            t = ok.filter(pc.equal(ok["judge"], judge))
            fname = f"qrels/{slug(judge)}.txt"
            counts[fname] = write_qrels(pa.table({"query_id": t["query_id"], "doc_id": t["doc_id"],
                                                  "relevance": t["grade"]}), out / fname, doc_names=names)
            files.append(fname)
    neg = tables.get(negatives)
    if neg is not None and neg.num_rows:
        pairs = neg.group_by(["query_id", "pos_doc_id"]).aggregate([])
        counts["qrels/positives.txt"] = write_qrels(pa.table({
            "query_id": pairs["query_id"], "doc_id": pairs["pos_doc_id"],
            "relevance": pa.array([1] * pairs.num_rows, pa.int32())}), out / "qrels/positives.txt", doc_names=names)
        files.append("qrels/positives.txt")
        used.append(negatives)
    for name in sorted(n for n in tables if n.split("/", 1)[0] == "candidates"):
        t = in_corpus(tables[name], documents)
        if t.num_rows:
            used.append(name)
        for retriever in sorted(set(t["retriever"].to_pylist())):
            r = t.filter(pc.equal(t["retriever"], retriever))
            fname = f"runs/{slug(name.replace('/', '__'))}.{slug(retriever)}.txt"
            counts[fname] = write_run(r.select(["query_id", "doc_id", "score"]), out / fname, tag=slug(retriever),
                                      doc_names=names)
            files.append(fname)
    left = sorted(set(tables) - set(used))
    return Written({"rows": counts, "files": files}, sorted(set(used)),
                   [{"key": n, "reason": "no rows about the documents of this corpus (imported for another corpus)"}
                    for n in left])


def write_parquet(tables: dict[str, pa.Table], out: Path) -> Written:
    counts = {}
    for name in sorted(tables):
        fname = f"{name.replace('/', '__')}.parquet"
        pq.write_table(tables[name], out / fname, compression="zstd")
        counts[fname] = tables[name].num_rows
    return Written({"rows": counts, "files": sorted(counts)}, sorted(tables))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"
