"""Mining policies on hand-made vectors (exact scores), bounded memory, and the mining stage on the
sample corpus: modality-aware negatives and an incremental refresh that re-mines only the
queries new documents can reach."""
from __future__ import annotations

import hashlib
import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from schemas.config import IndexConfig, NegativesConfig
from tasks.index.lexical import LexicalIndex
from tasks.index.refresh import refresh_vector_index
from tasks.negatives.mine import mine
from tasks.negatives.plan import plan_mining


def unit(angles_deg) -> np.ndarray:
    a = np.radians(np.asarray(angles_deg, np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def index_of(vectors: np.ndarray, doc_ids: list[str]):
    t = pa.table({
        "item_id": doc_ids, "item_kind": ["document"] * len(doc_ids), "doc_id": doc_ids,
        "content_sha256": [hashlib.sha256(v.tobytes()).hexdigest() for v in vectors], "space": ["s"] * len(doc_ids),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors).ravel()), vectors.shape[1])})
    return refresh_vector_index("t", t, None, IndexConfig()).index


def scored_corpus(scores: dict[str, float]):
    """Documents whose cosine with the query (1, 0) is exactly the given score."""
    ids = list(scores)
    angles = np.degrees(np.arccos(np.clip(list(scores.values()), -1, 1)))
    return index_of(unit(angles), ids), unit([0.0])


def run(index, qvec, positives: list[str], qid="q", **cfg):
    queries = pa.table({"query_id": [qid], "text": ["query"]})
    pos = pa.table({"query_id": [qid] * len(positives), "doc_id": positives})
    return mine(queries, qvec, pos, index, NegativesConfig(**cfg))


def negs(res) -> list[str]:
    t = res.negatives
    return list(dict.fromkeys(t["neg_doc_id"].to_pylist()))


# ---- plan ------------------------------------------------------------------------------------------
def test_positives_resolve_by_streaming_the_corpus_ids_in_batches():
    """Our ids, a source's ids and a duplicate's id all resolve; the corpus arrives in batches
    (as a large one is read), so no whole table or dict of it is needed."""
    from tasks.negatives.inputs import resolve_doc_ids

    documents = pa.table({"doc_id": ["d1", "d2", "d3"], "source_id": ["s1", None, "s3"]})
    source_ids = pa.table({"source_id": ["s1", "s3", "dup-of-s1"], "doc_id": ["d1", "d3", "d1"]})
    wanted = ["d2", "s3", "dup-of-s1", "nowhere", "s1"]
    expected = ["d2", "d3", "d1", None, "d1"]
    assert resolve_doc_ids(wanted, documents, source_ids) == expected
    assert resolve_doc_ids(wanted, iter(documents.to_batches(max_chunksize=1)),
                           iter(source_ids.to_batches(max_chunksize=2))) == expected
    assert resolve_doc_ids(["s3"], documents) == ["d3"]  # without source_ids: documents.source_id
    assert resolve_doc_ids([], documents, source_ids) == []


def test_window_and_depth_derive_like_sentence_transformers():
    p = plan_mining(NegativesConfig(num_negatives=3), max_positives=4)
    assert (p.range_max, p.depth) == (3 + 4, 3 + 4 + 4 + 1)  # the peer retrieves range_max + positives + 1
    p = plan_mining(NegativesConfig(num_negatives=3, range_min=5, relative_margin=0.05), max_positives=2)
    assert (p.range_max, p.depth) == (5 + 30 + 2, 37 + 2 + 1)
    p = plan_mining(NegativesConfig(num_negatives=2, modality={"enabled": True}), max_positives=1)
    assert p.depth == 50 and p.range_max == 50  # deep enough for the C2 band 46-50
    with pytest.raises(ValueError, match="cannot mine 5 negatives per query"):
        plan_mining(NegativesConfig(num_negatives=5, range_min=8, range_max=10), 1)
    with pytest.raises(ValueError, match="range_min .* must be smaller"):
        plan_mining(NegativesConfig(num_negatives=1, range_min=10, range_max=10), 1)


# ---- margins, scores, window -------------------------------------------------------------------------
def test_margins_anchor_on_the_minimum_positive_score():
    index, q = scored_corpus({"p1": 0.95, "p2": 0.60, "a": 0.90, "b": 0.58, "c": 0.52, "d": 0.45, "e": 0.30})
    plain = run(index, q, ["p1", "p2"], num_negatives=3)
    assert negs(plain) == ["a", "b", "c"]
    absolute = run(index, q, ["p1", "p2"], num_negatives=3, absolute_margin=0.1)  # keep <= 0.60 - 0.1
    assert negs(absolute) == ["d", "e"] and absolute.report["removed"]["absolute_margin"] == 3
    relative = run(index, q, ["p1", "p2"], num_negatives=3, relative_margin=0.1)  # keep <= 0.60 * 0.9
    assert negs(relative) == ["c", "d", "e"] and relative.report["removed"]["relative_margin"] == 2
    # one row per (positive, negative), each with that positive's score
    rows = absolute.negatives.to_pylist()
    assert len(rows) == 4 and {(r["pos_doc_id"], round(r["pos_score"], 4)) for r in rows} == {("p1", 0.95), ("p2", 0.6)}
    assert all("abs_margin=0.1" in r["policy"] and r["retriever"] == "dense" for r in rows)
    assert absolute.report["queries_short"] == 1  # asked 3, found 2: counted, not dropped


def test_relative_margin_is_correct_for_negative_scores():
    """s+ = -0.2, r = 0.5: the threshold is -0.2 - 0.1 = -0.3. The naive s+ * (1 - r) = -0.1 would keep
    -0.15, a candidate the query prefers to its positive."""
    index, q = scored_corpus({"pos": -0.2, "harder": -0.15, "close": -0.25, "far": -0.35, "farther": -0.6})
    res = run(index, q, ["pos"], num_negatives=4, relative_margin=0.5)
    assert negs(res) == ["far", "farther"]
    res = run(index, q, ["pos"], num_negatives=4, absolute_margin=0.1)
    assert negs(res) == ["far", "farther"]


def test_max_and_min_score_and_the_rank_window():
    index, q = scored_corpus({"pos": 0.9, **{f"n{i}": 0.8 - 0.05 * i for i in range(12)}})
    assert negs(run(index, q, ["pos"], num_negatives=3, max_score=0.66)) == ["n3", "n4", "n5"]
    assert negs(run(index, q, ["pos"], num_negatives=5, min_score=0.56)) == ["n0", "n1", "n2", "n3", "n4"]
    assert negs(run(index, q, ["pos"], num_negatives=5, min_score=0.61)) == ["n0", "n1", "n2", "n3"]
    window = run(index, q, ["pos"], num_negatives=3, range_min=4, range_max=9)
    assert negs(window) == ["n4", "n5", "n6"]
    assert window.negatives["rank"].to_pylist() == [6, 7, 8]  # retrieval ranks count the positive
    # the window counts eligible candidates (after filters) within the retrieved depth
    # (range_max + positives + 1 = 7: pos, n0..n5), as the peer does: n3, n4, n5 survive, range_min
    # skips n3
    assert negs(run(index, q, ["pos"], num_negatives=2, range_min=1, range_max=5, max_score=0.66)) == ["n4", "n5"]


def test_sampling_random_is_seeded_and_cyclical_spreads_over_the_window():
    index, q = scored_corpus({"pos": 0.99, **{f"n{i:02d}": 0.9 - 0.01 * i for i in range(40)}})
    a = run(index, q, ["pos"], num_negatives=4, range_max=30, sampling="random", seed=1)
    b = run(index, q, ["pos"], num_negatives=4, range_max=30, sampling="random", seed=1)
    c = run(index, q, ["pos"], num_negatives=4, range_max=30, sampling="random", seed=2)
    assert negs(a) == negs(b) and negs(a) != negs(c)
    assert all(int(n[1:]) < 30 for n in negs(a) + negs(c)) and len(negs(a)) == 4
    assert a.negatives["score"].to_pylist() == sorted(a.negatives["score"].to_pylist(), reverse=True)
    assert "sampling=random:1" in a.negatives["policy"][0].as_py()
    cyc = sorted(int(n[1:]) for n in negs(run(index, q, ["pos"], num_negatives=3, range_max=30, sampling="cyclical")))
    assert len(cyc) == 3 and np.diff(cyc).tolist() == [10, 10]  # one from each third of the window
    offsets = {min(int(n[1:]) for n in negs(run(index, q, ["pos"], qid=f"q{i}", num_negatives=3, range_max=30,
                                                sampling="cyclical"))) for i in range(12)}
    assert len(offsets) > 3  # the offset cycles across queries, so all ranks get used


# ---- judge filter ----------------------------------------------------------------------------------
def judgments(rows: list[tuple[str, str, int | None, float | None]]) -> pa.Table:
    return pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                     "judge": ["j"] * len(rows), "grade": pa.array([r[2] for r in rows], pa.int8()),
                     "expected_grade": pa.array([r[3] for r in rows], pa.float32()),
                     "status": ["ok" if r[2] is not None else "parse_error" for r in rows]})


def test_judge_filter_drops_likely_false_negatives():
    index, q = scored_corpus({"pos": 0.9, "a": 0.85, "b": 0.8, "c": 0.75, "d": 0.7, "e": 0.65, "f": 0.6})
    j = judgments([("q", "pos", 2, 2.4),  # s_judge(pos) = 0.8, threshold 0.79
                   ("q", "a", 2, 2.38),  # 0.793 > 0.79: dropped by score
                   ("q", "b", 2, 1.9),  # score 0.633 passes, but grade 2: dropped
                   ("q", "c", 1, 2.35),  # 0.783 <= 0.79, grade 1: kept
                   ("q", "d", None, None),  # a parse error is no label: unjudged
                   ("q", "e", 0, 0.2)])
    cfg = dict(num_negatives=4, range_max=6, judge_filter={"enabled": True, "unjudged": "keep"})
    res = mine(pa.table({"query_id": ["q"], "text": ["x"]}), q, pa.table({"query_id": ["q"], "doc_id": ["pos"]}),
               index, NegativesConfig(**cfg), judgments=j)
    assert negs(res) == ["c", "d", "e", "f"]  # kept, as asked (imported qrels: unjudged means not relevant)
    assert res.report["removed"] == {"judge_score": 1, "judge_grade": 1}
    got = {r["neg_doc_id"]: (r["judge_score"], r["judge_grade"]) for r in res.negatives.to_pylist()}
    assert got["c"] == (pytest.approx(2.35 / 3), 1) and got["d"] == (None, None)
    # the default never lets an unjudged candidate through (the stage judges them first; what is left is dropped)
    strict = mine(pa.table({"query_id": ["q"], "text": ["x"]}), q, pa.table({"query_id": ["q"], "doc_id": ["pos"]}),
                  index, NegativesConfig(**cfg | {"judge_filter": {"enabled": True}}), judgments=j)
    assert negs(strict) == ["c", "e"] and strict.report["removed"]["unjudged"] == 2


# ---- modality-aware (synthetic, exact ranks) -----------------------------------------------------------
def test_modality_classes_on_exact_ranks():
    n = 60
    ids = [f"d{i:02d}" for i in range(n)]
    index, q = scored_corpus({d: 0.95 - 0.01 * i for i, d in enumerate(ids)})
    modality = ["image" if i % 3 == 0 else "text" for i in range(n)]
    docs = pa.table({"doc_id": ids, "modality": modality})
    queries = pa.table({"query_id": ["q"], "text": ["x"], "target_modality": ["text"]})
    pos = pa.table({"query_id": ["q"], "doc_id": ["d10"]})  # rank 11
    res = mine(queries, q, pos, index, NegativesConfig(num_negatives=20, modality={"enabled": True}),
               documents=docs)
    got = {r["neg_doc_id"]: r for r in res.negatives.to_pylist()}
    c1 = {d for d, r in got.items() if "modality=c1" in r["policy"]}
    c2 = {d for d, r in got.items() if "modality=c2" in r["policy"]}
    assert c1 == {"d00", "d03", "d06", "d09"}  # images (wrong modality) above the positive
    assert c2 == {d for d in ids[45:50] if int(d[1:]) % 3}  # texts at ranks 46-50
    assert all(46 <= got[d]["rank"] <= 50 for d in c2)
    assert res.report["modality_c1"] == 4 and res.report["modality_c2"] == len(c2)


# ---- lexical candidates -----------------------------------------------------------------------------
def test_bm25_and_both_sources_score_in_the_dense_space():
    texts = {"pos": "giraffe facts", "lex": "zebra stripes zebra", "d1": "animals", "d2": "savanna", "d3": "trees"}
    index, q = scored_corpus({"pos": 0.9, "lex": 0.1, "d1": 0.8, "d2": 0.7, "d3": 0.6})
    lex = LexicalIndex.build(pa.table({"doc_id": list(texts), "text": list(texts.values())}), IndexConfig())
    queries = pa.table({"query_id": ["q"], "text": ["zebra giraffe"]})
    pos = pa.table({"query_id": ["q"], "doc_id": ["pos"]})
    dense = mine(queries, q, pos, index, NegativesConfig(num_negatives=3, depth=3))
    assert "lex" not in negs(dense)
    only_lex = mine(queries, q, pos, index, NegativesConfig(num_negatives=3, source="bm25"), lexical=lex)
    assert negs(only_lex) == ["lex"] and only_lex.negatives["retriever"].to_pylist() == ["bm25"]
    assert only_lex.negatives["score"][0].as_py() == pytest.approx(0.1, abs=1e-5)  # dense score, not BM25's
    both = mine(queries, q, pos, index, NegativesConfig(num_negatives=4, source="both", depth=3), lexical=lex)
    assert negs(both) == ["d1", "d2", "lex"]
    assert dict(zip(both.negatives["neg_doc_id"].to_pylist(), both.negatives["retriever"].to_pylist()))["lex"] == "bm25"
    with pytest.raises(ValueError, match="needs the BM25 index"):
        mine(queries, q, pos, index, NegativesConfig(source="bm25"))


# ---- accounting and bounded memory --------------------------------------------------------------------
def test_queries_without_positives_are_quarantined_and_shortfalls_reported():
    index, q = scored_corpus({"pos": 0.9, "a": 0.5})
    queries = pa.table({"query_id": ["q", "lonely", "unindexed"], "text": ["x", "y", "z"]})
    pos = pa.table({"query_id": ["q", "unindexed"], "doc_id": ["pos", "not-in-index"]})
    vecs = np.repeat(q, 3, axis=0)
    res = mine(queries, vecs, pos, index, NegativesConfig(num_negatives=2, absolute_margin=0.0))
    reasons = {r["key"]: r["reason"] for r in res.quarantine.rows}
    assert set(reasons) == {"lonely", "unindexed"}
    assert "no positive document" in reasons["lonely"] and "no positive of this query has a vector" in reasons["unindexed"]
    assert res.report["queries_short"] == 1 and res.report["short_examples"] == ["q"]
    assert res.report["queries"] == 3 and res.report["queries_mined"] == 1


def test_batched_topk_never_builds_the_query_by_corpus_matrix():
    rng = np.random.default_rng(0)
    n_docs, n_q, dim = 40_000, 2_000, 16
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    index = index_of(docs, [f"d{i}" for i in range(n_docs)])
    qv = docs[:n_q] + 0.1 * rng.normal(size=(n_q, dim)).astype(np.float32)
    queries = pa.table({"query_id": [f"q{i}" for i in range(n_q)], "text": ["t"] * n_q})
    pos = pa.table({"query_id": [f"q{i}" for i in range(n_q)], "doc_id": [f"d{i}" for i in range(n_q)]})
    cfg = NegativesConfig(num_negatives=5, relative_margin=0.05, query_batch=256)
    tracemalloc.start()
    res = mine(queries, qv, pos, index, cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    full_matrix = n_q * n_docs * 4
    assert peak < full_matrix / 8, f"peak {peak / 2**20:.1f} MiB vs a {full_matrix / 2**20:.0f} MiB score matrix"
    assert res.report["queries_mined"] == n_q and res.negatives.num_rows > 0
    # batching does not change the result
    small = mine(queries.slice(0, 300), qv[:300], pos, index, cfg.model_copy(update={"query_batch": 7}),
                 max_positives=1)
    assert small.negatives.equals(res.negatives.filter(pc.is_in(res.negatives["query_id"],
                                                                value_set=queries.slice(0, 300)["query_id"])))


# ---- the stage on the sample corpus ----------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(minilm):
    """The sample corpus ingested, with alt-text captions and MiniLM vectors; queries are a held-back
    human caption of each COCO image, aimed at the modality of that image's document."""
    from schemas.config import load_config
    from schemas.tables import CAPTIONS, QUERIES, embeddings_schema
    from tasks.embed import text_items
    from tasks.ingest.stage import ingest_corpus
    from tasks.runtime.ids import record_id
    from tests.conftest import SAMPLE_CONFIG

    cfg = load_config(SAMPLE_CONFIG)
    documents = ingest_corpus(cfg.corpus_root, cfg.corpus.sources, cfg.ingest).table("documents")
    alt = documents.filter(pc.is_valid(documents["alt_text"]))
    captions = pa.table({
        "caption_id": [record_id(d, t) for d, t in zip(alt["doc_id"].to_pylist(), alt["alt_text"].to_pylist())],
        "doc_id": alt["doc_id"], "image_sha256": alt["image_sha256"], "text": alt["alt_text"],
        "source": ["alt_text"] * alt.num_rows, "captioner": ["alt_text"] * alt.num_rows,
        "prompt_version": [None] * alt.num_rows, "params": [None] * alt.num_rows}, schema=CAPTIONS)
    items = text_items(documents, captions)
    vecs = minilm.embed(items["text"].to_pylist())
    emb = pa.table({"item_id": items["item_id"], "item_kind": items["item_kind"], "doc_id": items["doc_id"],
                    "content_sha256": items["content_sha256"], "space": [minilm.name] * items.num_rows,
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), vecs.shape[1])},
                   schema=embeddings_schema(vecs.shape[1]))
    coco = json.loads((cfg.corpus_root / "captions_coco.json").read_text())
    caps: dict[int, list[str]] = {}
    for a in coco["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"].strip())
    target = {"text": "text", "image": "image", "interleaved": "text+image"}
    rows = []
    for d, sid, m in zip(documents["doc_id"].to_pylist(), documents["source_id"].to_pylist(),
                         documents["modality"].to_pylist()):
        if sid and sid.startswith("coco:"):
            text = caps[int(sid[5:])][1]
            rows.append({"query_id": record_id("q", text), "doc_id": d, "target_modality": target[m], "text": text,
                         "generator": "coco-human", "prompt_version": "-", "passed": True})
    queries = pa.Table.from_pylist(rows, schema=QUERIES)
    return documents, captions, emb, queries


class Ctx:
    """A test catalog with its config, read helpers and the stages run against it."""

    def __init__(self, cfg):
        from tasks.runtime.lifecycle import Run

        self.config = cfg
        self.run = Run.open(cfg)
        self.catalog, self.root = self.run.catalog, self.run.root

    def read(self, name, version=None):
        return self.run.read(name, version)

    def current(self, name):
        return self.catalog.current(name)

    def put(self, name, table, parents=()):
        from tasks.runtime.write import seed

        return seed(self.catalog, self.root, name, table, parents)


def _ctx(tmp_path, **negatives):
    from schemas.config import config_from_dict

    return Ctx(config_from_dict({"corpus": {"root": str(tmp_path), "sources": [{"kind": "manifest", "path": "x"}]},
                                 "workdir": str(tmp_path / "work"), "negatives": negatives}))


def run_index(ctx) -> dict:
    from tasks.index.stage import Index
    from tests.stages import run_one

    refs, s = run_one(ctx.config, Index(ctx.config))
    return {n: v | {"version": refs[f"indexes/{n}"].version} for n, v in s["notes"].items()}


def run_mining(ctx) -> dict:
    from tasks.negatives.stage import Negatives
    from tests.stages import run_one

    stage = Negatives(ctx.config)
    refs, s = run_one(ctx.config, stage)
    name = stage.outputs()[0]
    return s["notes"] | {"negatives": refs[name].ref if name in refs else None}


def _publish_state(ctx, documents, captions, emb, queries):
    d = ctx.put("documents", documents)
    c = ctx.put("captions", captions, [d])
    ctx.put("embeddings/text", emb, [d, c])
    ctx.put("queries", queries, [d])
    return run_index(ctx)


def test_modality_aware_negatives_on_the_sample_corpus(sample, tmp_path):
    documents, captions, emb, queries = sample
    ctx = _ctx(tmp_path, num_negatives=6, modality={"enabled": True, "c2_band": [12, 16]})
    _publish_state(ctx, documents, captions, emb, queries)
    report = run_mining(ctx)
    negatives = ctx.read("negatives")
    cands = ctx.read("candidates/mining")
    modality = dict(zip(documents["doc_id"].to_pylist(), documents["modality"].to_pylist()))
    want = {"text": "text", "image": "image", "text+image": "interleaved"}
    target = dict(zip(queries["query_id"].to_pylist(), queries["target_modality"].to_pylist()))
    rank_of = {(q, d): r for q, d, r in zip(cands["query_id"].to_pylist(), cands["doc_id"].to_pylist(),
                                            cands["rank"].to_pylist())}
    c1 = c2 = 0
    for r in negatives.to_pylist():
        wanted = want[target[r["query_id"]]]
        if "modality=c1" in r["policy"]:
            c1 += 1
            assert modality[r["neg_doc_id"]] != wanted
            assert r["score"] > r["pos_score"] and r["rank"] < rank_of[(r["query_id"], r["pos_doc_id"])]
        else:
            assert "modality=c2" in r["policy"]
            c2 += 1
            assert modality[r["neg_doc_id"]] == wanted and 12 <= r["rank"] <= 16
    assert c1 > 0 and c2 > 0 and report["modality_c1"] > 0 and report["modality_c2"] > 0
    # the stage recorded lineage and counts
    parents = {p["parent_name"] for p in ctx.catalog.lineage("negatives").to_pylist() if p["depth"] == 1}
    assert {"documents", "queries", "indexes/text"} <= parents
    stage = ctx.catalog.query("SELECT rows_in, rows_out, rows_quarantined FROM stage_runs WHERE stage='negatives'").to_pylist()
    assert stage == [{"rows_in": queries.num_rows, "rows_out": queries.num_rows, "rows_quarantined": 0}]


def test_refresh_adds_to_the_index_and_remines_only_affected_queries(sample, tmp_path):
    documents, captions, emb, queries = sample
    held = set(documents.filter(pc.starts_with(documents["source_id"], "coco:"))["doc_id"].to_pylist()[-4:])

    def without(t, col="doc_id"):
        return t.filter(pc.invert(pc.is_in(t[col], value_set=pa.array(sorted(held)))))

    ctx = _ctx(tmp_path / "inc", num_negatives=3)
    _publish_state(ctx, without(documents), without(captions), without(emb), without(queries))
    first = run_mining(ctx)
    assert first["mode"] == "full" and first["queries_remined"] == queries.num_rows - 4

    d = ctx.put("documents", documents)
    c = ctx.put("captions", captions, [d])
    ctx.put("embeddings/text", emb, [d, c])
    ctx.put("queries", queries, [d])
    idx = run_index(ctx)
    assert idx["text"]["action"] == "added" and idx["text"]["version"] == 2
    second = run_mining(ctx)
    assert second["mode"] == "incremental"
    assert second["refresh"]["new_or_changed_queries"] == 4
    assert 4 < second["queries_remined"] < queries.num_rows  # the new queries plus those new documents reach
    assert second["queries_reused"] == queries.num_rows - second["queries_remined"]
    # queries only the new vectors reach merge their old list with those vectors, without a search
    assert 0 < second["refresh"]["queries_merged"] <= second["refresh"]["by_new_documents"]

    # the incremental result equals mining everything from scratch on the grown corpus
    fresh = _ctx(tmp_path / "full", num_negatives=3)
    _publish_state(fresh, documents, captions, emb, queries)
    full = run_mining(fresh)
    assert full["mode"] == "full"
    keys = [("query_id", "ascending"), ("pos_doc_id", "ascending"), ("neg_doc_id", "ascending")]
    inc, ref = ctx.read("negatives").sort_by(keys), fresh.read("negatives").sort_by(keys)
    exact = ["query_id", "pos_doc_id", "neg_doc_id", "rank", "policy", "retriever"]
    assert inc.select(exact).equals(ref.select(exact))
    # scores agree to float noise (query vectors were embedded in different batches)
    assert np.allclose(inc["score"].to_numpy(), ref["score"].to_numpy(), atol=1e-5)
    # nothing changed: the next refresh re-mines nothing and publishes no new version
    third = run_mining(ctx)
    assert third["queries_remined"] == 0 and third["negatives"] == second["negatives"]


def test_mine_command_from_imported_queries_and_qrels(sample, tmp_path, prefect_harness, capsys):
    """`corpusforge mine` on topics + qrels files whose ids are the sources' own (coco:<id>), with
    a judge label set imported by `corpusforge import-qrels` filtering a false negative."""
    import yaml

    from flows.cli import main
    from schemas.config import load_config
    from tests.stages import Judgments

    documents, captions, emb, queries = sample
    coco = [(d, s) for d, s in zip(documents["doc_id"].to_pylist(), documents["source_id"].to_pylist())
            if s and s.startswith("coco:")][:6]
    text_by_doc = dict(zip(queries["doc_id"].to_pylist(), queries["text"].to_pylist()))
    (tmp_path / "topics.tsv").write_text("".join(f"t{i}\t{text_by_doc[d]}\n" for i, (d, _) in enumerate(coco)))
    qrels = "".join(f"t{i} 0 {s} 3\n" for i, (_, s) in enumerate(coco)) + "t0 0 coco:999999 2\nt1 0 " + \
        f"{coco[2][1]} 1\n"
    (tmp_path / "qrels.txt").write_text(qrels)
    config = tmp_path / "mine.yaml"
    base = {"corpus": {"root": str(tmp_path), "sources": [{"kind": "manifest", "path": "x"}]},
            "workdir": str(tmp_path / "work"),
            "negatives": {"num_negatives": 3, "queries_file": "topics.tsv", "qrels_file": "qrels.txt"}}
    config.write_text(yaml.safe_dump(base))
    ctx = Ctx(load_config(config))
    _publish_state(ctx, documents, captions, emb, queries.slice(0, 0))
    first = run_mining(ctx)
    assert first["negatives"] == "negatives/topics@v1"  # imported queries mine into their own dataset
    neg = ctx.read("negatives/topics")
    top = neg.filter(pc.equal(neg["query_id"], "t0")).sort_by("rank")["neg_doc_id"][0].as_py()
    assert first["queries_remined"] == 6 and first["queries_quarantined"] == 0
    assert ctx.catalog.query("SELECT count(*) AS n FROM quarantine WHERE reason LIKE 'positive document is not%'"
                             ).to_pylist() == [{"n": 1}]  # coco:999999, counted with its reason

    # an assessor says t0's top negative answers it: import that label set, mine with the judge filter
    source_id = dict(zip(documents["doc_id"].to_pylist(), documents["source_id"].to_pylist()))[top]
    (tmp_path / "assessor.txt").write_text(f"t0 0 {source_id} 2\n")
    Judgments(ctx.config.catalog_path).import_qrels([tmp_path / "assessor.txt"])
    config.write_text(yaml.safe_dump(base | {"negatives": base["negatives"] | {"judge_filter": {"enabled": True}}}))
    assert main(["mine", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "mined 6/6 queries (full)" in out and "index text: unchanged" in out
    neg = ctx.read("negatives/topics")
    t0 = neg.filter(pc.equal(neg["query_id"], "t0"))
    assert top not in t0["neg_doc_id"].to_pylist() and t0.num_rows == 3
    assert all("judge_filter" in p for p in neg["policy"].to_pylist())
    parents = {p["parent_name"] for p in ctx.catalog.lineage("negatives/topics").to_pylist() if p["depth"] == 1}
    assert "judgments/assessor" in parents
    assert ctx.current("negatives") is None  # the build's negatives were never touched
