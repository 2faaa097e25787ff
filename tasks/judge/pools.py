"""Pair pools: which (query, document) pairs the judge stage grades, as its units.

From files: a qrels file, a run file or Parquet naming the pairs, a topics file and a passages
file (JSONL `docid`/`doc` as LLMJudge ships it, `doc_id`/`text`, or the manifest's `id`/`text`;
or Parquet). From the catalog: the usable synthetic queries x their top-k documents in the text
index (the one top-k, on query vectors from the embed cache), plus each query's own source when
answerability is on. A pair that cannot be judged (no query text, no document text) is rejected
with the reason.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks.corpus import document_text, document_texts
from tasks.runtime.ids import cache_key, record_id
from tasks.runtime.stage import KEY, UNIT, Units

SCHEMA = pa.schema([(UNIT, pa.string()), (KEY, pa.string()), ("query_id", pa.string()), ("query_text", pa.string()),
                    ("doc_id", pa.string()), ("doc_text", pa.string()), ("image_path", pa.string()),
                    ("cosine", pa.float32())])  # the offline judge's cosine, when known before the work


def pair_units(pairs: list[tuple], fp: str, rejected: list[dict], duplicates: list[str]) -> Units:
    """Units from (query_id, query_text, doc_id, doc_text, image_path, image_sha256) tuples."""
    cols = {n: [] for n in SCHEMA.names}
    for qid, qt, did, dt, img, img_sha in pairs:
        for k, v in zip(SCHEMA.names, (f"{qid}/{did}", cache_key(record_id(qt, dt, img_sha), fp), qid, qt, did, dt, img,
                                       None)):
            cols[k].append(v)
    return Units(pa.table(cols, schema=SCHEMA), rejected, duplicates)


def with_cosines(inputs, units: pa.Table, encoder) -> pa.Table:
    """The units with the cosine of each query and document text, from vectors the embed cache has
    (every document text the embed stage embedded, every query text a stage embedded before), so
    the offline judge does not embed again what the catalog already holds. Each distinct text is
    looked up once; a text never embedded is embedded once, into the cache."""
    import numpy as np

    from tasks.embed import text_vectors

    if units.num_rows == 0:
        return units
    texts = list(dict.fromkeys(units["query_text"].to_pylist() + units["doc_text"].to_pylist()))
    vecs = text_vectors(inputs, texts, encoder)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    at = {t: i for i, t in enumerate(texts)}
    q = vecs[[at[t] for t in units["query_text"].to_pylist()]]
    d = vecs[[at[t] for t in units["doc_text"].to_pylist()]]
    cos = np.einsum("ij,ij->i", q, d).astype(np.float32)
    return units.set_column(units.schema.get_field_index("cosine"), "cosine", pa.array(cos, pa.float32()))


class Passages(dict):
    """Passage texts by id, with why an id has none (`why`) and how many lines could not be read
    at all (`unreadable`), so a pair rejected for a missing text says which of the two it was."""

    def __init__(self):
        super().__init__()
        self.why: dict[str, str] = {}
        self.unreadable = 0


def read_passages(path: str | Path) -> Passages:
    """Passages by id: JSONL `docid`/`doc` (LLMJudge), `doc_id`/`text` or `id`/`text` (the
    manifest format, where an image's `alt_text` is read as an `[Image: ...]` line); or Parquet
    with doc_id (or id) and text."""
    path = Path(path)
    out = Passages()
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        idcol = "doc_id" if "doc_id" in t.column_names else "id"
        if idcol not in t.column_names or "text" not in t.column_names:
            raise LookupError(f"passages file {path.name} needs the columns doc_id (or id) and text; it has "
                              f"{', '.join(t.column_names) or 'none'}")
        kind = t.schema.field("text").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise LookupError(f"passages file {path.name}: column text is {kind}, not a string")
        out.update({str(d): x for d, x in zip(t[idcol].to_pylist(), t["text"].to_pylist())})
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError:
                r = None
            did = r.get("docid", r.get("doc_id", r.get("id"))) if isinstance(r, dict) else None
            if did is None or isinstance(did, (dict, list)):
                out.unreadable += 1  # no id to tie it to: its pairs are rejected as "no text"
                continue
            text = r.get("doc", r.get("text"))
            if text is not None and not isinstance(text, str):
                out.why[str(did)] = f"its text on line {n} is a JSON {type(text).__name__}, not a string"
                text = None
            alt = r.get("alt_text")
            if isinstance(alt, str) and alt.strip():  # a manifest image with alt-text reads as the corpus does
                text = document_text(text, [alt.strip()])
            out[str(did)] = text
    return out


def units_from_files(pairs: str | Path, queries: str | Path, docs: str | Path, fp: str,
                     limit: int | None = None) -> Units:
    """Pairs named by a qrels file, a run file or a Parquet file (query_id, doc_id), with the
    query texts from a topics file and the document texts from a passages file."""
    from tasks.judge import trec_io

    pairs = Path(pairs)
    rejected: list[dict] = []
    duplicates: list[str] = []
    keys: list[tuple[str, str]] = []
    if pairs.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(pairs, columns=["query_id", "doc_id"])
        raw = list(zip(map(str, t["query_id"].to_pylist()), map(str, t["doc_id"].to_pylist())))
    else:
        raw = []
        for n, line in trec_io.lines_of(pairs):
            parts = None if line is None else line.split()
            if not parts or len(parts) < 3:
                rejected.append({"key": f"{pairs.name}:{n}", "reason": "pairs line needs at least qid, iter and docid",
                                 "payload": (line or "").strip() or None})
                continue
            raw.append((parts[0], parts[2]))
    seen = set()
    for k in raw:
        if k in seen:
            duplicates.append(f"{k[0]}/{k[1]}")
            continue
        seen.add(k)
        keys.append(k)
    if limit is not None:
        keys = keys[:limit]  # pairs left out on purpose are not input to this run
    topics = trec_io.read_topics(queries)
    qtext = dict(zip(topics.table["query_id"].to_pylist(), topics.table["text"].to_pylist()))
    passages = read_passages(docs)
    ok = []
    for qid, did in keys:
        qt, dt = qtext.get(qid), passages.get(did)
        if not qt:
            rejected.append({"key": f"{qid}/{did}", "reason": f"query '{qid}' has no text in {Path(queries).name}"})
        elif dt is None or not str(dt).strip():
            why = passages.why.get(did) or ("it is not in the file" if did not in passages else "its text is empty")
            if did not in passages and passages.unreadable:
                why += f" ({passages.unreadable} of its lines could not be read as a passage with an id)"
            rejected.append({"key": f"{qid}/{did}",
                             "reason": f"document '{did}' has no text in {Path(docs).name}: {why}"})
        else:
            ok.append((qid, qt, did, dt, None, None))
    return pair_units(ok, fp, rejected, duplicates)


def units_from_catalog(inputs, top_k: int, fp: str, with_sources: bool = False) -> Units:
    """The usable synthetic queries x their top-k documents in the text index (+ their sources)."""
    from tasks.embed import text_vectors
    from tasks.queries.stage import text_index, usable_queries

    queries = usable_queries(inputs["queries"])
    documents = inputs["documents"]
    index = text_index(inputs)
    if index is None:
        raise LookupError("judging the build's queries needs the text index (the index stage)")
    qids, qtexts = queries["query_id"].to_pylist(), queries["text"].to_pylist()
    pairs: dict[str, list[str]] = {q: [] for q in qids}
    if qids:
        vecs = text_vectors(inputs, qtexts)
        _, found = index.search_docs(vecs, top_k)
        for q, row in zip(qids, found):
            pairs[q] = [index.docs[j] for j in row if j >= 0]
    if with_sources:
        for q, d in zip(qids, queries["doc_id"].to_pylist()):
            if d not in pairs[q]:
                pairs[q].append(d)
    dtext = document_texts(documents, inputs.get("captions"))
    from tasks.ingest.checks import Rejected, resolve_inside

    root = inputs.corpus_root
    meta = {d: (u, s) for d, u, s in zip(documents["doc_id"].to_pylist(), documents["image_uri"].to_pylist(),
                                         documents["image_sha256"].to_pylist())}
    qtext = dict(zip(qids, qtexts))
    rejected, ok = [], []
    for q in qids:
        for d in sorted(pairs[q]):
            if not dtext.get(d):
                rejected.append({"key": f"{q}/{d}", "reason": f"document {d} has neither text nor a caption to judge"})
                continue
            uri, sha = meta.get(d, (None, None))
            path = None
            if uri:
                try:
                    path = str(resolve_inside(root, uri))
                except Rejected as e:  # an image swapped for a link out of the corpus since ingest
                    rejected.append({"key": f"{q}/{d}", "reason": str(e)})
                    continue
            ok.append((q, qtext[q], d, dtext[d], path, sha))
    return pair_units(ok, fp, rejected, [])


def grades_of(table: pa.Table) -> dict[tuple[str, str], int]:
    """(query_id, doc_id) -> grade over the graded rows of a judgments table."""
    t = table.filter(pc.is_valid(table["grade"]))
    return dict(zip(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()), t["grade"].to_pylist()))
