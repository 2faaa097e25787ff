"""Offline synthetic queries on the LLMJudge passages: how many survive each filter, round-trip first.

    .venv/bin/python -m infra.bench.eval_queries_llmjudge [--per-target 2] [--limit N]

The passages (TREC DL 2023, de-duplicated by text as the corpus stores them) are the documents;
the offline extractive generator writes `per_target` text queries per passage, and the queries
stage's own filters judge them: length, copying, near-duplicates, and round-trip (the source
passage in the query's MiniLM top-10 over all passages, a FAISS flat index). Prints one line per
filter and `BENCH queries_llmjudge roundtrip_pass=... all_pass=...`.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa


def generate(doc_ids: list[str], texts: list[str], per_target: int, seed: int = 0) -> pa.Table:
    """The queries stage's candidates for the text target, through its own generator and ids."""
    from schemas.config import QueriesConfig
    from tasks.queries.generate import generate_offline
    from tasks.queries.stage import CANDIDATE
    from tasks.runtime.ids import canonical_json, record_id, text_sha256
    from tasks.runtime.stage import KEY

    cfg = QueriesConfig(targets=["text"], per_target=per_target, seed=seed)
    content = [text_sha256(canonical_json(["text", t, None])) for t in texts]
    units = pa.table({KEY: content, "target": ["text"] * len(texts), "text": texts, "caption": [None] * len(texts),
                      "content_sha256": content})
    out = generate_offline(units, cfg)
    rows = []
    for d, t, k, qs in zip(doc_ids, texts, content, out["texts"].to_pylist()):
        for i, q in enumerate(qs or []):
            rows.append({"query_id": record_id(k, i, q), "doc_id": d, "target_modality": "text", "text": q,
                         "generator": out["generator"][0].as_py(), "prompt_version": "v1", "source_text": t})
    return pa.Table.from_pylist(rows, schema=CANDIDATE)


def flat_index(vectors: np.ndarray, doc_ids: list[str], space: str):
    """The text index the queries stage would search: one vector per passage, exact (flat)."""
    from schemas.config import IndexConfig
    from tasks.index.refresh import refresh_vector_index
    from tasks.runtime.ids import text_sha256

    vectors = np.ascontiguousarray(vectors, np.float32)
    table = pa.table({"item_id": doc_ids, "item_kind": ["document"] * len(doc_ids), "doc_id": doc_ids,
                      "content_sha256": [text_sha256(d) for d in doc_ids], "space": [space] * len(doc_ids),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])})
    return refresh_vector_index("text", table, None, IndexConfig()).index


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-target", type=int, default=2)
    ap.add_argument("--limit", type=int, help="only the first N passages generate queries (all stay in the index)")
    args = ap.parse_args(argv)

    from infra.bench.eval_tree_llmjudge import embed_passages, load
    from schemas.config import QueryFilters
    from tasks.backends.embedders import minilm
    from tasks.queries.filters import apply_filters

    ids, texts, _, _ = load()
    unique = dict(zip(texts, ids))  # the corpus stores identical passages once
    texts, ids = list(unique), list(unique.values())
    embedder = minilm()
    t0 = time.perf_counter()
    vecs = embed_passages(texts, embedder)
    index = flat_index(vecs, ids, space=embedder.name)
    n = args.limit or len(ids)
    cand = generate(ids[:n], texts[:n], args.per_target)
    qv = embedder.embed(cand["text"].to_pylist())
    table = apply_filters(cand, qv, index, QueryFilters())
    seconds = time.perf_counter() - t0
    rates = {f: float(np.mean(table[f"pass_{f}"].to_pylist())) for f in ("length", "copy", "dedup", "roundtrip")}
    rates["all"] = float(np.mean(table["passed"].to_pylist()))
    ranks = [r for r in table["roundtrip_rank"].to_pylist() if r is not None]
    print(f"# {n} passages of {len(ids)} generate {table.num_rows} queries ({table['generator'][0].as_py()}); "
          f"index of {len(ids)} passages")
    for f, r in rates.items():
        print(f"  pass_{f:<10} {r:.4f}")
    print(f"  mean round-trip rank of those within the top 10: {np.mean(ranks):.2f}")
    print(f"BENCH queries_llmjudge roundtrip_pass={rates['roundtrip']:.4f} all_pass={rates['all']:.4f} "
          f"copy_pass={rates['copy']:.4f} dedup_pass={rates['dedup']:.4f} length_pass={rates['length']:.4f} "
          f"queries={table.num_rows} passages={n} seconds={seconds:.0f}")
    return rates | {"table": table}


if __name__ == "__main__":
    main()
