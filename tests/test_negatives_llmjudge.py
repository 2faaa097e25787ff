"""Hard negative mining on real data: the LLMJudge passages (TREC DL 2023) with MiniLM.

1. Equivalence with the peer: `sentence_transformers.util.mine_hard_negatives`, run with the
   real MiniLM model on the same passages, queries and positives (human grade >= 2), returns the
   same negative set per query as our miner for top sampling, both margins and a rank window.
   The passages are embedded once per session; the peer reads those very vectors through its
   own `cache_folder` (files named by its own hashing), so both sides rank identical vectors.
2. False-negative filtering with the human qrels as the judge.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from schemas.config import IndexConfig, NegativesConfig
from tasks.index.refresh import refresh_vector_index
from tasks.negatives.mine import mine
from tests.conftest import LLMJUDGE

DATA = LLMJUDGE / "data"
SUBSET = 9


def _embed_cached(minilm, texts: list[str], tag: str) -> np.ndarray:
    """Embed with our backend; CORPUSFORGE_TEST_CACHE (optional) keeps vectors between sessions."""
    cache = os.environ.get("CORPUSFORGE_TEST_CACHE")
    key = hashlib.sha256(json.dumps([minilm.name, texts]).encode()).hexdigest()[:16]
    path = Path(cache) / f"{tag}-{key}.npy" if cache else None
    if path and path.exists():
        return np.load(path)
    vecs = minilm.embed(texts)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
    return vecs


@pytest.fixture(scope="session")
def llmjudge(minilm, tmp_path_factory):
    passages = [json.loads(line) for line in (DATA / "llm4eval_test_passages_2024.jsonl").open()]
    # our documents are content-addressed, so identical passages are one document (as in the peer,
    # which de-duplicates its corpus by text); a duplicate's qrels go to the kept docid
    canonical: dict[str, str] = {}
    alias: dict[str, str] = {}
    for p in passages:
        alias[p["docid"]] = canonical.setdefault(p["doc"], p["docid"])
    text_of = {d: t for t, d in canonical.items()}
    grades: dict[tuple[str, str], int] = {}
    for line in (DATA / "llmjudge_test_qrel_idx.txt").open():
        qid, _, docid, grade = line.split()
        key = (qid, alias[docid])
        grades[key] = max(grades.get(key, 0), int(grade))
    # the pools of the first SUBSET test queries (about a third of the passages, embedded in a third
    # of the time): the other queries' passages would only be far-off candidates
    topics = dict(line.rstrip("\n").split("\t") for line in (DATA / "llm4eval_query_2024.txt").open())
    qids = sorted({q for q, _ in grades}, key=lambda q: int(q[1:]))[:SUBSET]
    grades = {k: g for k, g in grades.items() if k[0] in qids}
    pooled = {d for _, d in grades}
    text_of = {d: t for d, t in text_of.items() if d in pooled}
    doc_ids = sorted(text_of)
    docs_vec = _embed_cached(minilm, [text_of[d] for d in doc_ids], "llmjudge-docs")
    q_vec = _embed_cached(minilm, [topics[q] for q in qids], "llmjudge-queries")
    embeddings = pa.table({
        "item_id": doc_ids, "item_kind": ["document"] * len(doc_ids), "doc_id": doc_ids,
        "content_sha256": [hashlib.sha256(text_of[d].encode()).hexdigest() for d in doc_ids],
        "space": [minilm.name] * len(doc_ids),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(docs_vec.ravel()), docs_vec.shape[1]),
    })
    index = refresh_vector_index("text", embeddings, None, IndexConfig()).index
    assert index.type == "flat" and index.count == len(doc_ids) > 1000
    positives = sorted((q, d) for (q, d), g in grades.items() if g >= 2)
    pos_table = pa.table({"query_id": [q for q, _ in positives], "doc_id": [d for _, d in positives]})
    queries = pa.table({"query_id": qids, "text": [topics[q] for q in qids]})

    # the peer's embedding cache, under the names its own hashing gives (model name, prompts, texts)
    st_cache = tmp_path_factory.mktemp("st-cache")
    anchors = [topics[q] for q, _ in positives]
    corpus = [text_of[d] for d in index.docs]  # the same order as our index
    model_name = minilm.model.model_card_data.base_model or ""
    unique_queries = list(dict.fromkeys(anchors))
    qh = hashlib.sha256(repr((model_name, None, None, unique_queries)).encode()).hexdigest()
    ch = hashlib.sha256(repr((model_name, None, None, list(dict.fromkeys(corpus + [text_of[d] for _, d in positives])))).encode()).hexdigest()
    np.save(st_cache / f"query_embeddings_{qh}.npy", q_vec[[qids.index(q) for q in dict.fromkeys(q for q, _ in positives)]])
    np.save(st_cache / f"corpus_embeddings_{ch}.npy", docs_vec[[doc_ids.index(d) for d in index.docs]])
    return SimpleNamespace(index=index, queries=queries, q_vec=q_vec, positives=pos_table, grades=grades,
                           text_of=text_of, topics=topics, anchors=anchors, st_cache=st_cache, corpus=corpus,
                           pos_texts=[text_of[d] for _, d in positives], qids=qids)


def test_embeddings_are_the_peers_own(llmjudge, minilm):
    """Fairness: the vectors both miners use are what the peer's model itself computes."""
    sample = llmjudge.corpus[:16]
    theirs = minilm.model.encode_document(sample, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    ours = llmjudge.index.vectors(np.arange(16))
    assert np.allclose(ours, theirs, atol=1e-5)


def _ours(llmjudge, **params) -> dict[str, set[str]]:
    res = mine(llmjudge.queries, llmjudge.q_vec, llmjudge.positives, llmjudge.index, NegativesConfig(**params))
    out: dict[str, set[str]] = defaultdict(set)
    for q, n in zip(res.negatives["query_text"].to_pylist(), res.negatives["neg_doc_id"].to_pylist()):
        out[q].add(llmjudge.text_of[n])
    return dict(out)


def _theirs(llmjudge, minilm, **params) -> dict[str, set[str]]:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    before = sorted(p.name for p in llmjudge.st_cache.iterdir())
    ds = Dataset.from_dict({"query": llmjudge.anchors, "positive": llmjudge.pos_texts})
    out_ds = mine_hard_negatives(ds, minilm.model, corpus=llmjudge.corpus, cache_folder=str(llmjudge.st_cache),
                                 use_faiss=True, output_format="triplet", verbose=False, **params)
    assert sorted(p.name for p in llmjudge.st_cache.iterdir()) == before, "the peer re-embedded instead of reading the cache"
    out: dict[str, set[str]] = defaultdict(set)
    for row in out_ds:
        out[row["query"]].add(row["negative"])
    return dict(out)


CASES = {
    "top": dict(num_negatives=5),
    "absolute_margin": dict(num_negatives=5, absolute_margin=0.1),
    "relative_margin": dict(num_negatives=5, relative_margin=0.15),
    "range_window": dict(num_negatives=6, range_min=10, range_max=40),
}


@pytest.fixture(scope="module")
def peer_results(llmjudge, minilm):
    st_keys = {"num_negatives", "absolute_margin", "relative_margin", "range_min", "range_max"}
    return {name: (_ours(llmjudge, **p), _theirs(llmjudge, minilm, **{k: v for k, v in p.items() if k in st_keys}))
            for name, p in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_same_negatives_as_sentence_transformers(peer_results, llmjudge, case):
    ours, theirs = peer_results[case]
    assert sum(map(len, theirs.values())) > 0
    assert set(ours) == set(theirs)
    for q in theirs:
        assert ours[q] == theirs[q], f"{case}: query {q!r} differs"


def test_the_policies_change_the_negatives(peer_results):
    """Each policy has an effect here, so the equivalence above is not vacuous."""
    top = peer_results["top"][0]
    for case in ("absolute_margin", "relative_margin", "range_window"):
        assert peer_results[case][0] != top, case
    # margins push negatives below the positive: fewer or lower-ranked candidates survive
    assert any(peer_results["absolute_margin"][0].get(q, set()) != top[q] for q in top)


def test_false_negatives_filtered_with_human_qrels(llmjudge):
    """Positives are the grade-3 passages; the human qrels judge every candidate. Without the filter
    many mined negatives are passages humans graded >= 2 (false negatives); with it none are."""
    g = llmjudge.grades
    strict = [(q, d) for (q, d), grade in sorted(g.items()) if grade == 3]
    positives = pa.table({"query_id": [q for q, _ in strict], "doc_id": [d for _, d in strict]})
    judgments = pa.table({
        "query_id": [q for q, _ in g], "doc_id": [d for _, d in g], "judge": ["nist-human"] * len(g),
        "grade": pa.array(list(g.values()), pa.int8()), "expected_grade": pa.array([None] * len(g), pa.float32()),
        "status": ["ok"] * len(g)})
    base = dict(num_negatives=8, range_max=60)
    raw = mine(llmjudge.queries, llmjudge.q_vec, positives, llmjudge.index, NegativesConfig(**base))
    filtered = mine(llmjudge.queries, llmjudge.q_vec, positives, llmjudge.index,
                    NegativesConfig(**base, judge_filter={"enabled": True, "unjudged": "keep"}), judgments=judgments)

    def graded(table):
        return [g.get((q, n), 0) for q, n in zip(table["query_id"].to_pylist(), table["neg_doc_id"].to_pylist())]

    assert max(graded(raw.negatives)) >= 2 and sum(x >= 2 for x in graded(raw.negatives)) > 50
    assert filtered.negatives.num_rows > 0
    assert max(graded(filtered.negatives)) <= 1
    removed = filtered.report["removed"]
    raw_false = sum(x >= 2 for x in graded(raw.negatives))
    print(f"\nwithout the filter {raw_false} of {raw.negatives.num_rows} negative rows have human grade >= 2; "
          f"the filter removed {removed} of {filtered.report['candidates_considered']} candidates; "
          f"queries short of 8 negatives: {filtered.report['queries_short']}")
    assert removed["judge_score"] + removed["judge_grade"] > 0
    # the recorded judge fields agree with the labels, and the policy names the filter
    js = filtered.negatives["judge_score"].to_pylist()
    jg = filtered.negatives["judge_grade"].to_pylist()
    for q, n, s, gr in zip(filtered.negatives["query_id"].to_pylist(), filtered.negatives["neg_doc_id"].to_pylist(), js, jg):
        if (q, n) in g:
            assert gr == g[(q, n)] and s == pytest.approx(g[(q, n)] / 3)
        else:
            assert gr is None and s is None
    assert all("judge_filter=beta:0.01,grade<2,unjudged:keep" in p for p in filtered.negatives["policy"].to_pylist())
    # each query keeps its full quota where candidates allow, and shortfalls are reported
    assert filtered.report["queries_short"] == sum(
        1 for n in filtered.negatives.group_by("query_id").aggregate([("neg_doc_id", "count_distinct")])
        ["neg_doc_id_count_distinct"].to_pylist() if n < 8) + filtered.report["queries_without_negatives"]
