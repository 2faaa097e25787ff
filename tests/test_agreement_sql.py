"""The judgment SQL views and macros on small hand-made judgment sets: pair matching, statuses,
clamping, ensembles, the disagreement queue, export round trip and system-rank correlation."""
from __future__ import annotations

import json

import ir_measures
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import cohen_kappa_score

from schemas.tables import JUDGMENTS
from tasks.judge import analysis, trec_io
from tests.stages import Judgments


def rows(judge, labels, status=None):
    """labels: {(q, d): grade or None}; a None grade is a parse error."""
    out = []
    for (q, d), g in labels.items():
        p = None if g is None else [1.0 if i == min(max(g, 0), 3) else 0.0 for i in range(4)]
        out.append({"query_id": q, "doc_id": d, "judge": judge, "grade": None if g is None else min(max(g, 0), 3),
                    "p_grade": p, "expected_grade": None if g is None else float(min(max(g, 0), 3)),
                    "status": status or ("ok" if g is not None else "parse_error"), "raw": str(g)})
    return out


def publish(store, rws):
    store.publish(pa.Table.from_pylist(rws, schema=JUDGMENTS))


@pytest.fixture()
def store(tmp_path):
    return Judgments(tmp_path / "catalog.duckdb")


def test_pairs_need_both_grades_and_parse_errors_never_count(store):
    human = {("q1", f"d{i}"): g for i, g in enumerate([0, 1, 2, 3, 0, 1, 2, 3])}
    judge = {("q1", f"d{i}"): g for i, g in enumerate([0, 1, 2, 3, None, None, 1, 2])}
    judge[("q1", "extra")] = 3  # not in the reference: not a pair
    publish(store, rows("human", human) + rows("llm", judge))
    got = analysis.agreement(store.catalog, "human").to_pylist()
    assert len(got) == 1 and got[0]["n_pairs"] == 6
    a, b = [0, 1, 2, 3, 2, 3], [0, 1, 2, 3, 1, 2]
    assert got[0]["kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert got[0]["leniency"] == pytest.approx(np.mean(b) - np.mean(a))
    status = {(r["judge"], r["status"]): r["n"] for r in store.catalog.query("SELECT * FROM judgment_status").to_pylist()}
    assert status[("llm", "parse_error")] == 2
    dist = [r for r in analysis.label_distribution(store.catalog).to_pylist() if r["judge"] == "llm"]
    assert {(r["grade"], r["status"]): r["n"] for r in dist}[(None, "parse_error")] == 2
    assert sum(r["share"] for r in dist) == pytest.approx(1.0)


def test_degenerate_kappa_is_null_not_a_number(store):
    human = {("q1", f"d{i}"): 0 for i in range(4)}
    publish(store, rows("human", human) + rows("llm", dict(human)))
    got = analysis.agreement(store.catalog, "human").to_pylist()[0]
    assert got["kappa"] is None and got["alpha"] is None and got["n_pairs"] == 4


def test_kappa_and_alpha_on_random_labels_match_the_libraries(store):
    import krippendorff

    rng = np.random.default_rng(7)
    keys = [(f"q{i % 9}", f"d{i}") for i in range(600)]
    a = rng.integers(0, 4, len(keys))
    b = np.clip(a + rng.integers(-1, 2, len(keys)), 0, 3)
    c = rng.integers(-1, 6, len(keys))  # out-of-scale labels get clamped
    publish(store, rows("ref", dict(zip(keys, a.tolist()))) + rows("near", dict(zip(keys, b.tolist())))
            + rows("wild", dict(zip(keys, c.tolist()))))
    got = {r["judge"]: r for r in analysis.agreement(store.catalog, "ref").to_pylist()}
    for name, labels in (("near", b), ("wild", np.clip(c, 0, 3))):
        assert got[name]["kappa"] == pytest.approx(cohen_kappa_score(a, labels), abs=1e-12)
        for cut, col in ((1, "kappa_0_123"), (2, "kappa_01_23"), (3, "kappa_012_3")):
            assert got[name][col] == pytest.approx(cohen_kappa_score(a >= cut, labels >= cut), abs=1e-12)
        alpha = krippendorff.alpha(reliability_data=np.vstack([a, labels]).astype(float),
                                   level_of_measurement="ordinal", value_domain=[0, 1, 2, 3])
        assert got[name]["alpha"] == pytest.approx(alpha, abs=1e-12)


def test_ensembles_and_the_disagreement_queue(store):
    pairs = [("q1", "a"), ("q1", "b"), ("q2", "c")]
    j1 = dict(zip(pairs, [3, 0, 1]))
    j2 = dict(zip(pairs, [3, 2, 2]))
    j3 = dict(zip(pairs, [2, 0, None]))
    soft = rows("soft", {("q1", "a"): 1})
    soft[0]["p_grade"] = [0.1, 0.5, 0.3, 0.1]
    soft[0]["expected_grade"] = 1.4
    publish(store, rows("j1", j1) + rows("j2", j2) + rows("j3", j3) + soft)
    ens = {(r["query_id"], r["doc_id"]): r for r in
           store.catalog.query("SELECT * FROM judgment_ensemble_of(['j1', 'j2', 'j3'])").to_pylist()}
    assert ens[("q1", "a")]["majority_grade"] == 3 and ens[("q1", "a")]["majority_votes"] == 2
    assert ens[("q1", "a")]["tied"] is False
    assert ens[("q2", "c")]["n_judges"] == 2 and ens[("q2", "c")]["tied"] is True
    assert ens[("q2", "c")]["majority_grade"] == 1  # a tie takes the lower grade
    assert ens[("q1", "b")]["p_mean"] == pytest.approx([2 / 3, 0, 1 / 3, 0])
    assert ens[("q1", "b")]["mean_p_grade"] == 0
    assert ens[("q1", "b")]["expected_grade"] == pytest.approx(2 / 3)
    everyone = {(r["query_id"], r["doc_id"]): r for r in
                store.catalog.query("SELECT * FROM judgment_ensemble").to_pylist()}
    assert everyone[("q1", "a")]["n_judges"] == 4
    assert everyone[("q1", "a")]["p_mean"] == pytest.approx([0.025, 0.125, 0.325, 0.525])

    queue = store.catalog.query("SELECT * FROM judgment_disagreements").to_pylist()
    # widest spread first, then the larger standard deviation: b (0,2,0) before a (3,3,2,1)
    assert [(r["query_id"], r["doc_id"]) for r in queue] == [("q1", "b"), ("q1", "a"), ("q2", "c")]
    assert queue[1]["spread"] == 2 and queue[1]["n_judges"] == 4
    assert {g["judge"]: g["grade"] for g in queue[0]["grades"]} == {"j1": 0, "j2": 2, "j3": 0}
    agree = store.catalog.query("SELECT * FROM judgment_disagreements_of(['j1', 'j3'])").to_pylist()
    assert [(r["query_id"], r["doc_id"]) for r in agree] == [("q1", "a")]


def test_reimporting_a_judge_replaces_only_its_rows(store, tmp_path):
    (tmp_path / "human.txt").write_text("q1 0 d1 2\nq1 0 d2 0\n")
    (tmp_path / "llm.txt").write_text("q1 0 d1 2\nq1 0 d2 1\n")
    first = store.import_qrels([tmp_path / "human.txt", tmp_path / "llm.txt"])
    again = store.import_qrels([tmp_path / "llm.txt"])
    assert first.published and not again.published  # same content: no new version
    (tmp_path / "llm.txt").write_text("q1 0 d1 0\nq1 0 d2 1\nbroken line\n")
    third = store.import_qrels([tmp_path / "llm.txt"])
    assert third.published and third.quarantined == 1 and third.versions == {"judgments/llm": 2}
    labels = store.catalog.query("SELECT judge, doc_id, grade FROM judgments ORDER BY ALL").to_pylist()
    assert [(r["judge"], r["doc_id"], r["grade"]) for r in labels] == [
        ("human", "d1", 2), ("human", "d2", 0), ("llm", "d1", 0), ("llm", "d2", 1)]
    q = store.catalog.query("SELECT reason FROM quarantine WHERE stage = 'import_qrels'").to_pylist()
    assert "4 fields" in q[0]["reason"]
    stage = store.catalog.query("SELECT rows_in, rows_out, rows_quarantined FROM stage_runs "
                                "ORDER BY started_at DESC LIMIT 1").to_pylist()[0]
    assert stage == {"rows_in": 3, "rows_out": 2, "rows_quarantined": 1}
    out = tmp_path / "exported.txt"
    assert store.export_qrels("llm", out) == 2
    assert out.read_text() == "q1 0 d1 0\nq1 0 d2 1\n"


def test_system_rank_correlation_matches_direct_computation(store, tmp_path, capsys):
    """Runs that rank by each of several noisy label sets; two qrels order those runs."""
    rng = np.random.default_rng(3)
    docs = [(f"q{q}", f"d{q}_{i}") for q in range(6) for i in range(20)]
    truth = rng.integers(0, 4, len(docs))
    other = np.clip(truth + rng.integers(-1, 2, len(docs)), 0, 3)
    (tmp_path / "truth.txt").write_text("".join(f"{q} 0 {d} {g}\n" for (q, d), g in zip(docs, truth)))
    (tmp_path / "other.txt").write_text("".join(f"{q} 0 {d} {g}\n" for (q, d), g in zip(docs, other)))
    run_lines = []
    for s in range(6):
        noisy = truth + rng.normal(0, 0.5 + s * 0.6, len(docs))
        for (q, d), v in zip(docs, noisy):
            run_lines.append(f"{q} Q0 {d} 0 {v:.6f} sys{s}\n")
    (tmp_path / "runs.txt").write_text("".join(run_lines))
    store.import_qrels([tmp_path / "truth.txt", tmp_path / "other.txt"])
    store.import_runs([tmp_path / "runs.txt"])
    runs = analysis.runs_table(store.catalog, store.root)
    got = analysis.system_rank_correlation(analysis.qrels_of(store.catalog, "truth"),
                                           analysis.qrels_of(store.catalog, "other"), runs)
    assert got["n_systems"] == 6 and got["n_queries"] == 6
    run = trec_io.read_run(tmp_path / "runs.txt").table
    want = {}
    for name in ("truth", "other"):
        q = trec_io.ir_qrels(trec_io.read_qrels(tmp_path / f"{name}.txt").table)
        want[name] = [ir_measures.calc_aggregate([ir_measures.nDCG @ 10], q, trec_io.ir_run(
            run.filter(pc.equal(run["tag"], f"sys{s}"))))[ir_measures.nDCG @ 10] for s in range(6)]
    assert [got["scores_a"][f"sys{s}"] for s in range(6)] == pytest.approx(want["truth"], abs=1e-12)
    assert got["kendall_tau"] == pytest.approx(kendalltau(want["truth"], want["other"]).statistic)
    assert got["spearman_rho"] == pytest.approx(spearmanr(want["truth"], want["other"]).statistic)
    out = tmp_path / "sys0.txt"
    assert store.export_run("sys0", out) == len(docs)
    assert trec_io.read_run(out).table.num_rows == len(docs)

    from flows.cli import main

    assert main(["rank-correlation", "--catalog", store.catalog.path, "--reference", "truth",
                 "--judge", "other", "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)[0]
    assert cli["kendall_tau"] == pytest.approx(got["kendall_tau"]) and cli["n_systems"] == 6
