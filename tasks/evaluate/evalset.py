"""The evaluation set: queries with graded labels over the corpus, from one label set in the catalog
(an imported TREC qrels file, or any judge's labels).

Labels that name a document by the source's own id (TREC docids) are mapped to our doc ids; a
label whose document is not in the corpus stays in the qrels, so it counts as a relevant document
no retriever found (trec_eval's semantics), and is counted. Query texts come from a topics file,
else from the catalog's synthetic queries with those ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import EvaluateConfig


@dataclass
class EvalSet:
    name: str  # the label set's dataset name
    queries: dict[str, str]  # query_id -> text
    qrels: pa.Table  # query_id, doc_id (ours where resolvable), relevance
    counts: dict = field(default_factory=dict)


def label_set_name(cfg: EvaluateConfig) -> str | None:
    """The dataset the evaluation reads its labels from: judgments/<qrels file stem> or judgments/<judge>."""
    from pathlib import Path

    from tasks.judge.stage import label_set

    if cfg.qrels:
        return label_set(Path(cfg.qrels).stem)
    if cfg.judge:
        return cfg.judge if cfg.judge.startswith("judgments/") else label_set(cfg.judge)
    return None


def load_eval_set(name: str, labels: pa.Table, documents: pa.Table, topics: pa.Table | None,
                  queries: pa.Table | None) -> EvalSet:
    """The queries that have labels and a text, with their qrels in our doc ids."""
    from tasks.negatives.inputs import resolve_doc_ids

    ok = labels.filter(pc.and_(pc.equal(labels["status"], "ok"), pc.is_valid(labels["grade"])))
    raw_docs = ok["doc_id"].to_pylist()
    resolved = resolve_doc_ids(raw_docs, documents)
    doc_ids = [r or d for r, d in zip(resolved, raw_docs)]
    texts: dict[str, str] = {}
    for source in (queries, topics):  # a topics file wins over the catalog's queries
        if source is not None and source.num_rows:
            texts.update({q: t for q, t in zip(source["query_id"].to_pylist(), source["text"].to_pylist()) if t})
    labelled = sorted(set(ok["query_id"].to_pylist()))
    kept = [q for q in labelled if q in texts]
    if not kept:
        raise LookupError(f"no query of the label set {name} has a text: pass the topics file with "
                          "--queries (qid<TAB>text), or evaluate a judge of the catalog's own queries")
    keep = pa.array(kept, pa.string())
    qrels = pa.table({"query_id": ok["query_id"], "doc_id": pa.array(doc_ids, pa.string()),
                      "relevance": pc.cast(ok["grade"], pa.int32())})
    qrels = qrels.filter(pc.is_in(qrels["query_id"], value_set=keep))
    in_corpus = sum(1 for r, q in zip(resolved, ok["query_id"].to_pylist()) if r is not None and q in texts)
    counts = {"queries": len(kept), "queries_without_text": len(labelled) - len(kept), "labels": qrels.num_rows,
              "labels_outside_corpus": qrels.num_rows - in_corpus}
    return EvalSet(name, {q: texts[q] for q in kept}, qrels, counts)
