"""Exact dense retrieval over the whole corpus with one model: every document's text (the one rule
of tasks.corpus) and the queries go through the shared text-vector service (so the base model
reuses the build's embeddings), into a flat FAISS index searched with VectorIndex.search_docs."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas.config import IndexConfig, TextEncoder


def corpus_texts(documents: pa.Table, captions: pa.Table | None) -> tuple[list[str], list[str]]:
    """(doc ids, texts) of the documents that have something to read, in doc id order."""
    from tasks.corpus import document_texts

    texts = {d: t for d, t in document_texts(documents, captions).items() if t}
    ids = sorted(texts)
    return ids, [texts[d] for d in ids]


def retrieve(inputs, encoder: TextEncoder, doc_ids: list[str], doc_texts: list[str], queries: dict[str, str],
             depth: int) -> pa.Table:
    """The top `depth` documents per query as a run (query_id, doc_id, rank, score)."""
    from tasks.embed import text_vectors
    from tasks.index.refresh import refresh_vector_index
    from tasks.runtime.ids import text_sha256

    docs = text_vectors(inputs, doc_texts, encoder)
    qids = list(queries)
    qvecs = text_vectors(inputs, [queries[q] for q in qids], encoder)
    n = len(doc_ids)
    items = pa.table({"item_id": doc_ids, "item_kind": ["document"] * n, "doc_id": doc_ids,
                      "content_sha256": [text_sha256(t) for t in doc_texts], "space": ["evaluate"] * n,
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(docs).ravel()),
                                                                  docs.shape[1])})
    index = refresh_vector_index("evaluate", items, None, IndexConfig(type="flat")).index
    scores, pos = index.search_docs(qvecs, min(depth, n))
    rows = {"query_id": [], "doc_id": [], "rank": [], "score": []}
    for q, srow, prow in zip(qids, scores, pos):
        for rank, (s, p) in enumerate(((s, p) for s, p in zip(srow, prow) if p >= 0), 1):
            rows["query_id"].append(q)
            rows["doc_id"].append(str(index.docs[p]))
            rows["rank"].append(rank)
            rows["score"].append(float(s))
    return pa.table({"query_id": pa.array(rows["query_id"], pa.string()), "doc_id": pa.array(rows["doc_id"], pa.string()),
                     "rank": pa.array(rows["rank"], pa.int32()), "score": pa.array(rows["score"], pa.float64())})
