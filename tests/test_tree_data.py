"""Corpora for the tree tests (no tests here): a synthetic topical corpus and an LLMJudge slice.

The synthetic corpus gives each topic its own vocabulary and a vector cluster, so structure and
summaries can be checked against known topics in milliseconds; the LLMJudge slice is real text
embedded with the real MiniLM, computed once per test session.
"""
from __future__ import annotations

import functools
import zlib
import json
from collections import defaultdict

import numpy as np

from tests.conftest import LLMJUDGE

SYLLABLES = ["ka", "lo", "mi", "ru", "te", "shi", "no", "va", "pe", "zu", "ri", "da", "fo", "ge", "hu", "bi"]


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(SYLLABLES, size=3))


def synthetic_corpus(n: int, n_topics: int = 20, dim: int = 32, seed: int = 0):
    """(doc_ids, texts, vectors, topic of each doc): topical words and clustered unit vectors."""
    rng = np.random.default_rng(seed)
    vocab = [[_word(rng) for _ in range(8)] for _ in range(n_topics)]
    common = [_word(rng) for _ in range(30)]
    centres = rng.normal(size=(n_topics, dim))
    topics = rng.integers(n_topics, size=n)
    texts, vecs = [], []
    for i, t in enumerate(topics):
        words = list(rng.choice(vocab[t], size=10)) + list(rng.choice(common, size=4))
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".")
        v = centres[t] + 0.35 * rng.normal(size=dim)
        vecs.append(v / np.linalg.norm(v))
    ids = [f"doc{i:06d}" for i in range(n)]
    return ids, texts, np.asarray(vecs, np.float32), topics


def hashed_embedder(dim: int = 32):
    """A deterministic stand-in text encoder for summary vectors in the synthetic tests."""
    def embed(texts):
        out = np.zeros((len(texts), dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    return embed


def read_llmjudge():
    data = LLMJUDGE / "data"
    passages = {}
    with open(data / "llm4eval_test_passages_2024.jsonl") as f:
        for line in f:
            r = json.loads(line)
            passages[r["docid"]] = r["doc"]
    queries = dict(line.rstrip("\n").split("\t", 1) for line in open(data / "llm4eval_query_2024.txt") if line.strip())
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in open(data / "llmjudge_test_qrel_idx.txt"):
        qid, _, doc, grade = line.split()
        qrels[qid][doc] = int(grade)
    return passages, {q: queries[q] for q in qrels}, dict(qrels)


@functools.cache
def llmjudge_slice(n: int = 240):
    """n passages taken round-robin over the 25 test queries' judged pools, embedded with MiniLM."""
    from tasks.backends.embedders import minilm

    passages, queries, qrels = read_llmjudge()
    pools = [sorted(qrels[q], key=lambda d: (-qrels[q][d], d)) for q in sorted(qrels)]
    chosen: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(chosen) < n:
        for pool in pools:
            if i < len(pool) and pool[i] not in seen and pool[i] in passages and len(chosen) < n:
                chosen.append(pool[i])
                seen.add(pool[i])
        i += 1
    texts = [passages[d] for d in chosen]
    vectors = minilm().embed(texts)
    return chosen, texts, vectors, queries, qrels


@functools.cache
def llmjudge_tree(mode: str = "bottom_up", max_branching: int = 10):
    """The LLMJudge slice as a tree with offline summaries and MiniLM summary vectors (built once)."""
    from tasks.backends.embedders import minilm
    from tasks.tree.build import BuildParams, build_bottom_up, build_top_down
    from tasks.tree.summarize import ExtractiveSummarizer, TermStats

    ids, texts, vectors, _, _ = llmjudge_slice()
    build = build_bottom_up if mode == "bottom_up" else build_top_down
    return build("llmjudge", ids, texts, vectors, ExtractiveSummarizer(TermStats.of(texts)), minilm().embed,
                 BuildParams(max_branching=max_branching), space=minilm().name)


def hex_id(doc: str) -> str:
    """A test document id in the contract's form (32 hex digits)."""
    from tasks.runtime.ids import record_id

    return record_id("test-doc", doc)


def corpus_tables(ids, texts, vectors, space: str, sources=None):
    """`documents` and `embeddings/text` tables for the given passages (ids mapped by `hex_id`)."""
    import pyarrow as pa

    from schemas.tables import DOCUMENTS, embeddings_schema
    from tasks.runtime.ids import text_sha256

    n = len(ids)
    ids = [hex_id(d) for d in ids]
    docs = pa.Table.from_pylist([{"doc_id": d, "source_id": (sources[i] if sources else None), "modality": "text",
                                  "text": t, "source": "test", "meta": None} for i, (d, t) in enumerate(zip(ids, texts))],
                                schema=DOCUMENTS)
    vectors = np.ascontiguousarray(vectors, np.float32)
    emb = pa.table({"item_id": list(ids), "item_kind": ["document"] * n, "doc_id": list(ids),
                    "content_sha256": [text_sha256(t) for t in texts], "space": [space] * n,
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])},
                   schema=embeddings_schema(vectors.shape[1]))
    return docs, emb
