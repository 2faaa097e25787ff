"""Our qrels/run import + ir_measures give trec_eval's own expected output (NIST regression data).

Expected values are parsed from trec_eval's output files at test time; every query and the
`all` line are compared at the 4 decimals trec_eval prints.
"""
from __future__ import annotations

import ir_measures
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from ir_measures import AP, P, R, nDCG

from tasks.judge import trec_io
from tests.conftest import TREC_EVAL

BINARY = {"map": AP, "P_5": P @ 5, "P_10": P @ 10, "recall_1000": R @ 1000,
          "ndcg": nDCG, "ndcg_cut_10": nDCG @ 10}
GRADED = {"map": AP(rel=2), "P_5": P(rel=2) @ 5, "P_10": P(rel=2) @ 10, "recall_1000": R(rel=2) @ 1000,
          "ndcg": nDCG, "ndcg_cut_10": nDCG @ 10}


def expected(name: str) -> dict[tuple[str, str], float]:
    out = {}
    for line in (TREC_EVAL / name).read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in BINARY:
            out[(parts[0], parts[1])] = float(parts[2])
    return out


def ours(qrels_file: str, run_file: str, measures: dict) -> dict[tuple[str, str], float]:
    qrels = trec_io.read_qrels(TREC_EVAL / qrels_file)
    run = trec_io.read_run(TREC_EVAL / run_file)
    assert len(qrels.quarantine) == 0 and len(run.quarantine) == 0
    q, r = trec_io.ir_qrels(qrels.table), trec_io.ir_run(run.table)
    got = {(name, "all"): v for name, m in measures.items()
           for v in [ir_measures.calc_aggregate([m], q, r)[m]]}
    for m in ir_measures.iter_calc(list(measures.values()), q, r):
        name = next(k for k, v in measures.items() if v == m.measure)
        got[(name, m.query_id)] = m.value
    return got


@pytest.mark.parametrize("out_file", ["out.test", "out.test.a", "out.test.aq"])
def test_binary_relevance_matches_trec_eval(out_file):
    want = expected(out_file)
    got = ours("qrels.test", "results.test", BINARY)
    assert want, f"no measures parsed from {out_file}"
    for key, value in want.items():
        assert round(got[key], 4) == pytest.approx(value, abs=1e-9), key


def test_graded_relevance_level_2_matches_trec_eval():
    want = expected("out.test.aql")
    got = ours("qrels.rel_level", "results.test", GRADED)
    assert len(want) == len(GRADED) * 4  # three queries + all
    for key, value in want.items():
        assert round(got[key], 4) == pytest.approx(value, abs=1e-9), key


def test_rank_column_is_not_trusted_score_decides():
    """results.test lists ranks out of score order; candidates are re-ranked by score."""
    run = trec_io.read_run(TREC_EVAL / "results.test").table
    cands = trec_io.run_to_candidates(run)
    first = cands.filter(pc.equal(cands["query_id"], "301")).slice(0, 3).to_pylist()
    scores = [r["score"] for r in first]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in first] == [1, 2, 3]


def test_round_trip_through_files(tmp_path):
    qrels = trec_io.read_qrels(TREC_EVAL / "qrels.rel_level").table
    trec_io.write_qrels(qrels, tmp_path / "q.txt")
    back = trec_io.read_qrels(tmp_path / "q.txt").table
    key = [("query_id", "ascending"), ("doc_id", "ascending")]
    assert back.sort_by(key).equals(qrels.sort_by(key))
    run = trec_io.read_run(TREC_EVAL / "results.test").table
    trec_io.write_run(run, tmp_path / "r.txt")
    got = ours_files(tmp_path / "q.txt", tmp_path / "r.txt")
    assert round(got, 4) == 0.1667  # map at relevance level 2 from out.test.aql, via the rewritten files


def ours_files(qf, rf) -> float:
    q = trec_io.ir_qrels(trec_io.read_qrels(qf).table)
    r = trec_io.ir_run(trec_io.read_run(rf).table)
    return ir_measures.calc_aggregate([AP(rel=2)], q, r)[AP(rel=2)]


def test_bad_lines_are_quarantined_with_reasons(tmp_path):
    f = tmp_path / "bad.qrels"
    f.write_bytes(b"q1 0 d1 2\nq1 0 d2\nq1 0 d3 x\nq1 0 d1 2\nq1 0 d1 1\nq1 0 d4 1.5\n\xff\xfe 0 d 1\n")
    parsed = trec_io.read_qrels(f)
    assert parsed.table.num_rows == 1
    reasons = [r["reason"] for r in parsed.quarantine.rows]
    assert len(reasons) == 5 and parsed.duplicates == 1
    assert parsed.lines == parsed.table.num_rows + len(reasons) + parsed.duplicates
    assert any("4 fields" in r for r in reasons) and any("contradicts" in r for r in reasons)
    assert any("UTF-8" in r for r in reasons) and any("not a number" in r for r in reasons)


def test_values_beyond_the_int32_columns_are_bad_lines_not_crashes(tmp_path):
    """A 20-digit grade or rank names its field and line instead of failing the batch on int32."""
    qrels = tmp_path / "big.qrels"
    qrels.write_text("q1 0 d1 99999999999999999999\nq1 0 d2 -3000000000\nq1 0 d3 1e12\nq1 0 d4 2147483647\n")
    parsed = trec_io.read_qrels(qrels)
    assert parsed.table.column("doc_id").to_pylist() == ["d4"]
    reasons = [r["reason"] for r in parsed.quarantine.rows]
    assert len(reasons) == 3 and all("relevance" in r and "out of range" in r for r in reasons)
    run = tmp_path / "big.run"
    run.write_text("q1 Q0 d1 99999999999 1.5 t\nq1 Q0 d2 1 1.0 t\n")
    parsed = trec_io.read_run(run)
    assert parsed.table.num_rows == 1 and "rank" in parsed.quarantine.rows[0]["reason"]


def test_ids_with_whitespace_never_reach_a_trec_line(tmp_path):
    """A source id "doc 1" keeps the document's own id in TREC files; a query id with a space is a
    bad topics line; a writer asked to write such an id refuses instead of splitting the line."""
    docs = pa.table({"doc_id": ["a" * 32, "b" * 32, "c" * 32], "source_id": ["doc 1", "ok-2", "x\ny"]})
    names = trec_io.source_names(docs)
    assert names == {"b" * 32: "ok-2"}
    qrels = pa.table({"query_id": ["q1", "q1", "q1"], "doc_id": ["a" * 32, "b" * 32, "c" * 32],
                      "relevance": [1, 2, 0]})
    out = tmp_path / "out.qrels"
    assert trec_io.write_qrels(qrels, out, doc_names=names) == 3
    assert all(len(line.split()) == 4 for line in out.read_text().splitlines())
    with pytest.raises(ValueError, match="query_id 'q 1'.*whitespace"):
        trec_io.write_qrels(qrels.set_column(0, "query_id", pa.array(["q 1"] * 3)), out)
    with pytest.raises(ValueError, match="tag 'my run'"):
        trec_io.write_run(qrels.rename_columns(["query_id", "doc_id", "score"]), out, tag="my run")
    topics = tmp_path / "topics.JSONL"
    topics.write_text('{"qid": "q 1", "text": "a"}\n{"qid": 7, "text": "b"}\n{"qid": [1], "text": "c"}\n'
                      '{"qid": true, "text": "d"}\n')
    parsed = trec_io.read_topics(topics)
    assert parsed.table["query_id"].to_pylist() == ["7"]
    reasons = [r["reason"] for r in parsed.quarantine.rows]
    assert len(reasons) == 3 and "whitespace" in reasons[0] and "JSON list" in reasons[1] and "JSON bool" in reasons[2]
