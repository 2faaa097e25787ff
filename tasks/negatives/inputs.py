"""What mining reads: the queries and their positives, from the pipeline or from imported files.

Pipeline queries are the usable synthetic queries, each positive for its source document;
imported ones are a topics file plus TREC qrels whose documents may be named by our doc ids or
by the sources' own ids. A positive that names no document of the corpus is rejected with the
reason; so is a line of the imported files that does not parse.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import NegativesConfig


@dataclass
class MiningInputs:
    queries: pa.Table  # query_id, text[, target_modality]
    positives: pa.Table  # query_id, doc_id
    rejected: list[dict] = field(default_factory=list)  # {key, reason, payload}
    duplicates: list[str] = field(default_factory=list)


def resolve_doc_ids(doc_ids: list[str], documents, source_ids=None) -> list[str | None]:
    """Our doc ids for ids that are either ours or a source's own ids: `source_ids` maps every one,
    deduplicated records' ids included (documents.source_id holds only the first of each).

    `documents` (doc_id[, source_id]) and `source_ids` (source_id, doc_id) are tables or streams
    of batches: only the rows naming a wanted id are kept, so a corpus of millions of documents
    is never held whole for a few thousand qrels.
    """
    wanted = pa.array(sorted({d for d in doc_ids if d is not None}), pa.string())
    ours: set[str] = set()
    by_source: dict[str, str] = {}
    if len(wanted):
        for b in _stream(source_ids):
            hit = b.filter(pc.is_in(b["source_id"], value_set=wanted))
            by_source.update(zip(hit["source_id"].to_pylist(), hit["doc_id"].to_pylist()))
        for b in _stream(documents):
            ours.update(b["doc_id"].filter(pc.is_in(b["doc_id"], value_set=wanted)).to_pylist())
            if "source_id" in b.schema.names:
                hit = b.filter(pc.is_in(b["source_id"], value_set=wanted))
                for d, src in zip(hit["doc_id"].to_pylist(), hit["source_id"].to_pylist()):
                    by_source.setdefault(src, d)
    return [d if d in ours else by_source.get(d) for d in doc_ids]


def _stream(data):
    if data is None:
        return
    yield from (data.to_batches() if isinstance(data, pa.Table) else data)


def load_inputs(inputs, cfg: NegativesConfig) -> MiningInputs | None:
    """Queries and positives: imported files when configured, else the pipeline's queries, plus
    the documents that `positive_judges` graded at `positive_grade` or above."""
    from tasks.judge import trec_io
    from tasks.queries.stage import usable_queries

    rejected: list[dict] = []
    duplicates: list[str] = []
    if cfg.queries_file:
        topics = trec_io.read_topics(inputs.config.resolve(cfg.queries_file), stage="negatives")
        rejected += [{"key": r["key"], "reason": r["reason"], "payload": r["payload"]} for r in topics.quarantine.rows]
        duplicates += [f"topics:{i}" for i in range(topics.duplicates)]
        queries = topics.table
        pairs: list[tuple[str, str]] = []
        if cfg.qrels_file:
            parsed = trec_io.read_qrels(inputs.config.resolve(cfg.qrels_file), stage="negatives")
            rejected += [{"key": r["key"], "reason": r["reason"], "payload": r["payload"]}
                         for r in parsed.quarantine.rows]
            t = parsed.table.filter(pc.greater_equal(parsed.table["relevance"], cfg.positive_grade))
            pairs = list(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()))
    else:
        if "queries" not in inputs:
            return None
        q = usable_queries(inputs["queries"], inputs.get("query_answerability"))
        queries = q.select(["query_id", "text", "target_modality"])
        pairs = list(zip(q["query_id"].to_pylist(), q["doc_id"].to_pylist()))
    judgments = inputs.concat("judgments/")
    if cfg.positive_judges and judgments is not None:
        j = judgments.filter(pc.and_(pc.is_in(judgments["judge"], value_set=pa.array(cfg.positive_judges, pa.string())),
                                     pc.greater_equal(pc.fill_null(judgments["grade"], -1), cfg.positive_grade)))
        pairs += list(zip(j["query_id"].to_pylist(), j["doc_id"].to_pylist()))
    doc_columns = ["doc_id", "source_id"] if "source_id" in inputs.schema("documents").names else ["doc_id"]
    resolved = resolve_doc_ids([d for _, d in pairs], inputs.batches("documents", doc_columns),
                               inputs.batches("source_ids", ["source_id", "doc_id"]) if "source_ids" in inputs
                               else None)
    keep_q, keep_d = [], []
    for (q, d), r in zip(pairs, resolved):
        if r is None:
            rejected.append({"key": f"{q}:{d}",
                             "reason": "positive document is not in the corpus (neither a doc_id nor a source_id)"})
        else:
            keep_q.append(q)
            keep_d.append(r)
    positives = pa.table({"query_id": pa.array(keep_q, pa.string()), "doc_id": pa.array(keep_d, pa.string())})
    return MiningInputs(queries, positives, rejected, duplicates)
