"""The judge filter does what it says: it judges what it needs through the judge stage, never lets an
unjudged pair through silently, never skips the beta rule quietly, and deepens its window instead
of starving."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from schemas.config import NegativesConfig
from tasks.negatives.mine import mine
from tests.test_negatives import _ctx, _publish_state, judgments, negs, run_mining, sample, scored_corpus  # noqa: F401

ONE = pa.table({"query_id": ["q"], "text": ["x"]})
POS = pa.table({"query_id": ["q"], "doc_id": ["pos"]})


def _deep_corpus(n: int = 60):
    scores = {"pos": 0.99} | {f"d{i:02d}": 0.95 - 0.005 * i for i in range(n)}
    return scored_corpus(scores)


def test_the_window_deepens_until_enough_negatives_survive():
    index, q = _deep_corpus()
    # a judge that finds the 35 best candidates relevant (false negatives) and the rest not
    j = judgments([("q", "pos", 3, 3.0)] + [("q", f"d{i:02d}", 3 if i < 35 else 0, 3.0 if i < 35 else 0.1)
                                            for i in range(60)])
    cfg = dict(num_negatives=3, judge_filter={"enabled": True})
    res = mine(ONE, q, POS, index, NegativesConfig(**cfg), judgments=j)
    assert negs(res) == ["d35", "d36", "d37"] and res.report["queries_short"] == 0
    assert res.report["depth"] == 101  # max_depth 100 + the positive
    capped = mine(ONE, q, POS, index, NegativesConfig(**cfg | {"judge_filter": {"enabled": True, "max_depth": 30}}),
                  judgments=j)
    assert negs(capped) == [] and capped.report["queries_short"] == 1  # the cap holds, and says so
    plain = mine(ONE, q, POS, index, NegativesConfig(num_negatives=3), judgments=j)
    assert negs(plain) == ["d00", "d01", "d02"]  # without the filter the depth is what it was


def test_unjudged_pairs_are_never_let_through_silently():
    index, q = scored_corpus({"pos": 0.9, "a": 0.85, "b": 0.8, "c": 0.75})
    j = judgments([("q", "pos", 3, 2.7), ("q", "b", 0, 0.3)])  # a and c were never judged
    dropped = mine(ONE, q, POS, index, NegativesConfig(num_negatives=3, judge_filter={"enabled": True}), judgments=j)
    assert negs(dropped) == ["b"] and dropped.report["removed"]["unjudged"] == 2
    kept = mine(ONE, q, POS, index, NegativesConfig(num_negatives=3, judge_filter={"enabled": True,
                                                                                   "unjudged": "keep"}), judgments=j)
    policy = dict(zip(kept.negatives["neg_doc_id"].to_pylist(), kept.negatives["policy"].to_pylist()))
    assert sorted(policy) == ["a", "b", "c"] and kept.report["unjudged_kept"] == 2
    assert "judge=unjudged" in policy["a"] and "judge=unjudged" in policy["c"] and "judge=unjudged" not in policy["b"]


def test_the_beta_rule_is_never_skipped_quietly():
    index, q = scored_corpus({"pos": 0.9, "a": 0.85, "b": 0.8})
    j = judgments([("q", "a", 0, 0.3), ("q", "b", 0, 0.3)])  # the positive has no label
    res = mine(ONE, q, POS, index, NegativesConfig(num_negatives=2, judge_filter={"enabled": True}), judgments=j)
    assert res.negatives.num_rows == 0 and len(res.quarantine) == 1
    assert "beta rule" in res.quarantine.rows[0]["reason"]
    kept = mine(ONE, q, POS, index, NegativesConfig(num_negatives=2, judge_filter={"enabled": True,
                                                                                   "unjudged": "keep"}), judgments=j)
    assert negs(kept) == ["a", "b"] and kept.report["beta_skipped_queries"] == 1
    assert all("beta=skipped" in p for p in kept.negatives["policy"].to_pylist())


def test_mining_judges_what_the_filter_needs_through_the_judge_stage(sample, tmp_path):  # noqa: F811
    from tasks.judge.stage import Judge, label_set

    documents, captions, emb, queries = sample
    ctx = _ctx(tmp_path, num_negatives=4, judge_filter={"enabled": True})
    _publish_state(ctx, documents, captions, emb, queries)
    report = run_mining(ctx)
    judge = Judge(ctx.config, pool="mining", pairs_of=[]).judge()  # the configured (offline cosine) judge
    labels = ctx.read(label_set(judge))
    judged = set(zip(labels["query_id"].to_pylist(), labels["doc_id"].to_pylist()))
    neg = ctx.read("negatives")
    pairs = list(zip(neg["query_id"].to_pylist(), neg["pos_doc_id"].to_pylist(), neg["neg_doc_id"].to_pylist()))
    assert pairs and all((q, p) in judged and (q, n) in judged for q, p, n in pairs)  # nothing unjudged got through
    assert neg["judge_score"].null_count == 0 and neg["judge_grade"].null_count == 0
    assert report["judge_filter"]["judge"] == judge and report["judge_filter"]["pairs_asked"] == labels.num_rows
    assert report["queries_short"] == 0  # the window deepened where the filter removed candidates
    # only what the window needed was judged, not every retrieved candidate
    assert labels.num_rows < ctx.read("candidates/mining").num_rows
    stages = ctx.catalog.query("SELECT stage, count(*) AS n FROM stage_runs GROUP BY stage").to_pylist()
    assert {r["stage"]: r["n"] for r in stages}["judge"] == report["judge_filter"]["rounds"] >= 1
    parents = {p["parent_name"] for p in ctx.catalog.lineage("negatives").to_pylist() if p["depth"] == 1}
    assert label_set(judge) in parents  # the negatives name the labels they were filtered with
    removed = report["removed"]
    assert removed.get("judge_score", 0) + removed.get("judge_grade", 0) > 0
    # the offline judge graded with the vectors the catalog already had: its cosines are the index's scores
    import json

    cos = {(q, d): json.loads(r)["cosine"] for q, d, r in zip(labels["query_id"].to_pylist(),
                                                                labels["doc_id"].to_pylist(), labels["raw"].to_pylist())}
    text_only = set(documents.filter(pc.equal(documents["modality"], "text"))["doc_id"].to_pylist())
    checked = [r for r in neg.to_pylist() if r["neg_doc_id"] in text_only]  # one vector each: the text's
    assert checked
    for r in checked:
        assert cos[(r["query_id"], r["neg_doc_id"])] == pytest.approx(r["score"], abs=1e-4)

    again = run_mining(ctx)  # nothing new to judge
    assert again["judge_filter"]["pairs_asked"] == 0 and again["queries_remined"] == 0


def test_judge_pools_for_imported_queries_and_mining_candidates(sample, tmp_path):  # noqa: F811
    """`corpusforge judge --pool imported|mining`: the queries of negatives.queries_file, whose qrels name
    documents by their sources' own ids, against the index's top-k and against the mined candidates."""
    from tasks.judge.stage import Judge, label_set
    from tests.stages import run_one

    documents, captions, emb, queries = sample
    coco = [(d, s) for d, s in zip(documents["doc_id"].to_pylist(), documents["source_id"].to_pylist())
            if s and s.startswith("coco:")][:4]
    text_by_doc = dict(zip(queries["doc_id"].to_pylist(), queries["text"].to_pylist()))
    (tmp_path / "topics.tsv").write_text("".join(f"t{i}\t{text_by_doc[d]}\n" for i, (d, _) in enumerate(coco)))
    (tmp_path / "qrels.txt").write_text("".join(f"t{i} 0 {s} 3\n" for i, (_, s) in enumerate(coco)))
    ctx = _ctx(tmp_path, num_negatives=3, queries_file=str(tmp_path / "topics.tsv"),
               qrels_file=str(tmp_path / "qrels.txt"))
    _publish_state(ctx, documents, captions, emb, queries.slice(0, 0))
    config = ctx.config.model_copy(update={"judge": ctx.config.judge.model_copy(update={"top_k": 5})})

    refs, s = run_one(config, Judge(config, pool="imported"))
    name = Judge(config, pool="imported").judge()
    imported = ctx.read(label_set(name))
    got = set(zip(imported["query_id"].to_pylist(), imported["doc_id"].to_pylist()))
    assert s["rows_out"] == imported.num_rows and 4 * 5 <= imported.num_rows <= 4 * 6
    assert all((f"t{i}", d) in got for i, (d, _) in enumerate(coco))  # the positives, by our ids

    run_mining(ctx)
    cand = ctx.read("candidates/mining-topics")
    refs, s = run_one(config, Judge(config, pool="mining"))
    assert s["rows_quarantined"] == 0 and s["model_calls"] == 0  # the same pairs: all from the judge's cache
    top = cand.filter(pc.less_equal(cand["rank"], 5))
    assert set(zip(top["query_id"].to_pylist(), top["doc_id"].to_pylist())) <= got
