"""Searching the indexes: the user-facing `search()` for the CLI.

Every top-k over the corpus in the code base is `VectorIndex.search_docs` (a document scores as
its best vector): query round-trip, the judge's pools, mining and this search.
"""
from __future__ import annotations

import pyarrow as pa

from tasks.index.store import IndexStore
from tasks.index.vector import VectorIndex


def search(store: IndexStore, text: str, k: int = 10, retriever: str = "dense", index: str = "text",
           embedder=None) -> pa.Table:
    """Top-k documents for a text query: rank, doc_id, score, retriever.

    The query is embedded with the encoder recorded in the index manifest (or `embedder`), and
    refused when that encoder's space differs from the index's.
    """
    if not (text or "").strip():
        raise ValueError("the query text is empty: give the words to search for, e.g. \"red bicycle\"")
    rows: list[dict] = []
    if retriever in ("dense", "both"):
        vi = store.load_vector(index)
        if vi is None:
            known = ", ".join(store.names()) or "none"
            raise LookupError(f"no vector index '{index}' in the catalog (indexes: {known}): run `corpusforge build` "
                              "(the index stage) first" + ("; embed.image is unset, so there is no image index" if index == "image" else ""))
        emb = embedder or _embedder_for(vi)
        if getattr(emb, "name", vi.manifest.get("space")) != vi.manifest.get("space"):
            raise ValueError(f"encoder space {emb.name} differs from index space {vi.manifest.get('space')}")
        s, d = vi.search_docs(emb.embed([text]), k)
        rows += [{"doc_id": vi.docs[j], "score": float(x), "retriever": "dense"} for x, j in zip(s[0], d[0]) if j >= 0]
    if retriever in ("bm25", "both"):
        lex = store.load_lexical()
        if lex is None:
            raise LookupError("no BM25 index in the catalog: enable index.bm25 and run `corpusforge build`")
        s, d = lex.search([text], k)
        rows += [{"doc_id": lex.docs[j], "score": float(x), "retriever": "bm25"} for x, j in zip(s[0], d[0]) if j >= 0]
    if retriever == "both":  # fuse the two lists by reciprocal rank (scores are not comparable)
        fused: dict[str, float] = {}
        for kind in ("dense", "bm25"):
            for r, row in enumerate(x for x in rows if x["retriever"] == kind):
                fused[row["doc_id"]] = fused.get(row["doc_id"], 0.0) + 1.0 / (60 + r + 1)
        rows = [{"doc_id": d, "score": s, "retriever": "rrf"} for d, s in sorted(fused.items(), key=lambda x: -x[1])][:k]
    return pa.table({"rank": pa.array(range(1, len(rows) + 1), pa.int32()),
                     "doc_id": pa.array([r["doc_id"] for r in rows], pa.string()),
                     "score": pa.array([r["score"] for r in rows], pa.float32()),
                     "retriever": pa.array([r["retriever"] for r in rows], pa.string())})


def _embedder_for(vi: VectorIndex):
    from schemas.config import TextEncoder
    from tasks.backends.embedders import local_text_embedder

    encoder = (vi.manifest.get("source") or {}).get("encoder")
    if not encoder:
        raise ValueError(f"index '{vi.name}' records no text encoder; pass --config so the query can be embedded")
    return local_text_embedder(TextEncoder.model_validate(encoder).model_dump_json())

