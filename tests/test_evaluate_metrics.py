"""The evaluation's measures (tasks.evaluate.metrics, through ir_measures) against trec_eval's own
expected output on NIST's test vectors: nDCG@10 (ndcg_cut_10) and Recall@100 (recall_100) per query
and overall, binary and at relevance level 2; MRR@10 from trec_eval's recip_rank, which equals
RR@10 whenever the first relevant document is within the top 10 and is 0 otherwise."""
from __future__ import annotations

import pytest

from tasks.evaluate.metrics import paired_p, score
from tasks.judge import trec_io
from tests.conftest import TREC_EVAL


def trec_eval_output(name: str) -> dict[tuple[str, str], float]:
    out = {}
    for line in (TREC_EVAL / name).read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("ndcg_cut_10", "recall_100", "recip_rank"):
            out[(parts[0], parts[1])] = float(parts[2])
    return out


def expected_mrr10(want: dict) -> dict[str, float]:
    per_query = {q: (v if v >= 0.1 - 1e-9 else 0.0) for (m, q), v in want.items() if m == "recip_rank" and q != "all"}
    return per_query | {"all": sum(per_query.values()) / len(per_query)}


@pytest.mark.parametrize("qrels,out_file,level", [("qrels.test", "out.test.aq", 1),
                                                  ("qrels.rel_level", "out.test.aql", 2)])
def test_measures_match_trec_eval(qrels, out_file, level):
    want = trec_eval_output(out_file)
    got = score(trec_io.read_qrels(TREC_EVAL / qrels).table, trec_io.read_run(TREC_EVAL / "results.test").table, level)
    queries = sorted({q for _, q in want if q != "all"})
    assert sorted(got.per_query) == queries and got.queries == len(queries)
    for ours, theirs in (("ndcg_10", "ndcg_cut_10"), ("recall_100", "recall_100")):
        for q in queries:
            assert round(got.per_query[q][ours], 4) == pytest.approx(want[(theirs, q)], abs=1e-9), (ours, q)
        assert round(got.mean[ours], 4) == pytest.approx(want[(theirs, "all")], abs=1e-9), ours
    mrr = expected_mrr10(want)
    for q in queries:
        assert round(got.per_query[q]["mrr_10"], 4) == pytest.approx(mrr[q], abs=1e-9), q
    assert got.mean["mrr_10"] == pytest.approx(mrr["all"], abs=1e-4)
    assert any(0 < want[("recip_rank", q)] < 0.1 for q in queries)  # the cut at 10 is exercised


def test_paired_test_needs_two_differing_runs():
    qrels = trec_io.read_qrels(TREC_EVAL / "qrels.test").table
    run = trec_io.read_run(TREC_EVAL / "results.test").table
    a = score(qrels, run)
    assert paired_p(a, a) is None  # identical runs: no test
    flipped = run.set_column(run.schema.get_field_index("score"), "score",
                             trec_io.pa.array([-s for s in run["score"].to_pylist()], trec_io.pa.float64()))
    b = score(qrels, flipped)
    p = paired_p(a, b)
    assert b.mean["ndcg_10"] != a.mean["ndcg_10"] and p is not None and 0 <= p <= 1
