"""Pair pools for the judge: which (query, document) pairs to grade, with their texts.

From files: a qrels file, a run file or Parquet naming the pairs, a topics file (`qid<TAB>text`)
and a passages file (JSONL `docid`/`doc` as LLMJudge ships it, or `doc_id`/`text`, or Parquet).
From the catalog: the usable synthetic queries x their top-k candidates. A pair that cannot be
judged (no query text, no document text) is quarantined with the reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.runtime.accounting import Quarantine

STAGE = "judge"

PAIRS = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("query_text", pa.string()),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("doc_text", pa.string()),
    pa.field("image_path", pa.string()),  # absolute path of the document's image, if any
])


@dataclass
class Pool:
    """Pairs ready to judge plus what could not become a pair (each with a reason)."""

    pairs: pa.Table
    quarantine: Quarantine
    rows_in: int
    duplicates: int = 0
    parents: list = None


def read_topics(path: str | Path) -> dict[str, str]:
    """`qid<TAB>text` lines (TREC topics as the LLMJudge files give them)."""
    topics = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            qid, _, text = line.partition("\t")
            topics[qid.strip()] = text.strip()
    return topics


def read_passages(path: str | Path) -> dict[str, str]:
    """JSONL with `docid`/`doc` (LLMJudge) or `doc_id`/`text`, or Parquet with doc_id, text."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["doc_id", "text"])
        return dict(zip(t["doc_id"].to_pylist(), t["text"].to_pylist()))
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out[str(r.get("docid", r.get("doc_id")))] = r.get("doc", r.get("text"))
    return out


def pool_from_files(pairs: str | Path, queries: str | Path, docs: str | Path) -> Pool:
    """Pairs named by a qrels file, a run file or a Parquet file (query_id, doc_id), with the
    query texts from a topics file and the document texts from a passages file."""
    from tasks.judgments import trec_io

    pairs, q = Path(pairs), Quarantine(STAGE)
    if pairs.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(pairs, columns=["query_id", "doc_id"])
        keys, rows_in, dups = t.group_by(["query_id", "doc_id"]).aggregate([]), t.num_rows, 0
        dups = rows_in - keys.num_rows
    else:
        first = next((ln for ln in pairs.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()), "")
        parsed = trec_io.read_run(pairs, STAGE) if len(first.split()) == 6 else _pairs_qrels(pairs)
        keys = parsed.table.select(["query_id", "doc_id"])
        if "tag" in parsed.table.column_names:
            unique = keys.group_by(["query_id", "doc_id"]).aggregate([])
            parsed.duplicates += keys.num_rows - unique.num_rows
            keys = unique
        rows_in, dups = parsed.lines, parsed.duplicates
        q.rows.extend(parsed.quarantine.rows)
    topics, passages = read_topics(queries), read_passages(docs)
    cols = {k: [] for k in ("query_id", "query_text", "doc_id", "doc_text", "image_path")}
    for qid, did in zip(keys["query_id"].to_pylist(), keys["doc_id"].to_pylist()):
        qt, dt = topics.get(qid), passages.get(did)
        if not qt:
            q.add(f"{qid}/{did}", f"query {qid} has no text in {Path(queries).name}")
        elif dt is None or not str(dt).strip():
            q.add(f"{qid}/{did}", f"document {did} has no text in {Path(docs).name}")
        else:
            for k, v in zip(cols, (qid, qt, did, dt, None)):
                cols[k].append(v)
    return Pool(pa.table(cols, schema=PAIRS), q, rows_in, dups, [])


def _pairs_qrels(path: Path):
    """Pairs of a qrels file: its labels are ignored here (the reference comes from import-qrels);
    a line with a missing or non-numeric label still names a pair."""
    from tasks.judgments import trec_io

    q, rows, lines, dups = Quarantine(STAGE), {}, 0, 0
    for n, line in trec_io._lines(path):
        lines += 1
        parts = None if line is None else line.split()
        if not parts or len(parts) < 3:
            q.add(f"{path.name}:{n}", "pairs line needs at least qid, iter and docid", (line or "").strip())
            continue
        if (parts[0], parts[2]) in rows:
            dups += 1
            continue
        rows[(parts[0], parts[2])] = True
    t = pa.table({"query_id": [k[0] for k in rows], "doc_id": [k[1] for k in rows]})
    return trec_io.Parsed(t, q, lines, dups)


def usable_queries(queries: pa.Table) -> pa.Table:
    """Queries that pass every filter except answerability (which the judge itself decides)."""
    ok = None
    for col in ("pass_length", "pass_copy", "pass_dedup", "pass_roundtrip"):
        c = pc.fill_null(queries[col], False)
        ok = c if ok is None else pc.and_(ok, c)
    return queries.filter(ok) if ok is not None else queries


def pool_from_catalog(ctx, top_k: int, with_sources: bool = False) -> Pool:
    """The usable synthetic queries x their top-k candidates (the `candidates` dataset, or a
    FAISS top-k over the text embeddings when no candidates were published); with_sources adds
    each query's own source document (for answerability)."""
    queries = usable_queries(ctx.read("queries"))
    documents = ctx.read("documents")
    captions = ctx.read("captions") if ctx.current("captions") else None
    cands, source = _candidates(ctx, queries, top_k)
    if with_sources:
        sources = queries.select(["query_id", "doc_id"])
        cands = pa.concat_tables([cands.select(["query_id", "doc_id"]).cast(sources.schema), sources])
        cands = cands.group_by(["query_id", "doc_id"]).aggregate([])
    parents = [v for v in (ctx.current("queries"), ctx.current("documents"), ctx.current("captions"), source)
               if v is not None]
    qtext = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist()))
    dtext = document_texts(documents, captions)
    root = ctx.config.corpus_root
    images = {d: str(root / u) for d, u in zip(documents["doc_id"].to_pylist(), documents["image_uri"].to_pylist()) if u}
    q = Quarantine(STAGE)
    cols = {k: [] for k in PAIRS.names}
    for qid, did in zip(cands["query_id"].to_pylist(), cands["doc_id"].to_pylist()):
        if not dtext.get(did):
            q.add(f"{qid}/{did}", f"document {did} has neither text nor a caption to judge")
            continue
        for k, v in zip(PAIRS.names, (qid, qtext[qid], did, dtext[did], images.get(did))):
            cols[k].append(v)
    return Pool(pa.table(cols, schema=PAIRS), q, cands.num_rows, 0, parents)


def document_texts(documents: pa.Table, captions: pa.Table | None) -> dict[str, str]:
    """What a text judge reads: the text, plus `[Image: caption]` for each image's captions
    (model captions first, then alt-text)."""
    caps: dict[str, list[str]] = {}
    if captions is not None and captions.num_rows:
        order = sorted(captions.to_pylist(), key=lambda r: (r["doc_id"], r["source"] != "model", r["text"]))
        for r in order:
            if r["text"] and r["text"].strip() and r["text"] not in caps.setdefault(r["doc_id"], []):
                caps[r["doc_id"]].append(r["text"].strip())
    out = {}
    for did, text in zip(documents["doc_id"].to_pylist(), documents["text"].to_pylist()):
        parts = [text.strip()] if text and text.strip() else []
        parts += [f"[Image: {c}]" for c in caps.get(did, [])]
        out[did] = "\n".join(parts)
    return out


def _candidates(ctx, queries: pa.Table, top_k: int):
    """(query_id, doc_id) pairs and the dataset version they came from."""
    if ctx.current("candidates") is not None:
        c = ctx.read("candidates")
        c = c.filter(pc.and_(pc.less_equal(c["rank"], top_k), pc.is_in(c["query_id"], queries["query_id"])))
        return c.group_by(["query_id", "doc_id"]).aggregate([]), ctx.current("candidates")
    return _faiss_topk(ctx, queries, top_k)


def _faiss_topk(ctx, queries: pa.Table, top_k: int):
    import faiss

    from tasks.backends.embedders import local_text_embedder

    emb_names = ctx.catalog.query("SELECT name FROM datasets WHERE is_current AND name LIKE 'embeddings/%text%' "
                                  "ORDER BY name").column("name").to_pylist()
    if not emb_names:
        raise RuntimeError("judging the build's queries needs document text embeddings (the embed stage) "
                           "or a published `candidates` dataset")
    emb = ctx.read(emb_names[0])
    emb = emb.filter(pc.is_in(emb["item_kind"], pa.array(["document", "caption"])))  # images via captions
    vecs = np.stack(emb["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    doc_ids = emb["doc_id"].to_pylist()
    qv = local_text_embedder(ctx.config.embed.text.model_dump_json()).embed(queries["text"].to_pylist())
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    _, idx = index.search(qv, min(2 * top_k, len(doc_ids)))  # a document may have several vectors
    qids = queries["query_id"].to_pylist()
    rows = set()
    for i, qid in enumerate(qids):
        seen: list[str] = []
        for j in idx[i]:
            if j >= 0 and doc_ids[j] not in seen and len(seen) < top_k:
                seen.append(doc_ids[j])
        rows |= {(qid, d) for d in seen}
    rows = sorted(rows)
    return (pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows]}, schema=pa.schema(
        [("query_id", pa.string()), ("doc_id", pa.string())])), ctx.current(emb_names[0]))
