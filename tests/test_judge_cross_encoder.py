"""The cross-encoder judge: trained from a label set in the catalog (a tiny random BERT here, a few
steps on CPU; the real MiniLM training is infra/bench/eval_judge_llmjudge.py), recorded with its
training labels and lineage, then used as a judge backend that gives p_grade over 0-3."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from schemas.config import catalog_config
from schemas.tables import JUDGMENTS

TOPICS = {f"q{i}": text for i, text in enumerate(
    ["how do bounty hunters get paid", "what do bail agents earn", "bounty hunter salary per year",
     "who pays a bounty hunter", "how much is a bail bond fee", "bail enforcement agent income",
     "fugitive recovery agent pay", "do bounty hunters get a share of the bail"], start=1)}
PASSAGES = {
    "good": "Bounty hunters are paid by the bail bondsman: usually 10 to 20 percent of the bail for each fugitive.",
    "bad": "To clean smoke off walls, wash them with warm water, white vinegar and a little dish soap.",
    "image": None,  # an image without alt-text: nothing to read
}


def _files(tmp_path):
    topics = tmp_path / "topics.tsv"
    topics.write_text("".join(f"{q}\t{t}\n" for q, t in TOPICS.items()))
    docs = tmp_path / "docs.jsonl"  # the project's manifest format: {id, text}
    docs.write_text("".join(json.dumps({"id": d, "text": t} if t else {"id": d, "image": "x.jpg"}) + "\n"
                            for d, t in PASSAGES.items()))
    return topics, docs


def _label_set(cfg, name="assessor"):
    """A label set with graded pairs, one parse error and one pair whose document has no text."""
    from tests.stages import Judgments

    rows = [{"query_id": q, "doc_id": d, "judge": name, "grade": g, "expected_grade": None, "status": "ok"}
            for q in TOPICS for d, g in (("good", 3), ("bad", 0))]
    rows += [{"query_id": "q1", "doc_id": "image", "judge": name, "grade": 1, "status": "ok"},
             {"query_id": "q3", "doc_id": "x", "judge": name, "grade": None, "status": "parse_error"}]
    Judgments(cfg.catalog_path).publish(pa.Table.from_pylist(rows, schema=JUDGMENTS))


@pytest.fixture()
def cfg(tmp_path, tiny_bert):
    return catalog_config(tmp_path / "catalog.duckdb", judge={"training": {
        "base_model": tiny_bert, "epochs": 6, "learning_rate": 5e-3, "batch_size": 4, "max_length": 64,
        "freeze_layers": 1, "warmup_ratio": 0.0}})


def test_train_judge_records_its_labels_and_grades_held_out_queries(cfg, tmp_path):
    from flows.train_judge import train_judge
    from tasks.judge.cross_encoder import CrossEncoderGrader, read_manifest, resolve_model
    from tasks.judge.stage import Judge, label_set
    from tasks.runtime.catalog import Catalog
    from tests.stages import run_one

    topics, docs = _files(tmp_path)
    _label_set(cfg)
    got = train_judge(cfg, "assessor", name="tiny", split="odd", queries=str(topics), docs=str(docs))
    assert got["trained"] and got["dataset"] == "judge_models/tiny@v1"
    # odd queries only; the parse error is never a label and the image has no text: both quarantined
    assert got["pairs"] == 8 and got["quarantined"] == 2
    catalog = Catalog(cfg.catalog_path)
    reasons = catalog.query("SELECT reason FROM quarantine WHERE stage = 'train_judge' ORDER BY reason")
    assert [r.split(" ")[0] for r in reasons["reason"].to_pylist()] == ["document", "no"]
    labels = catalog.query("SELECT query_id, doc_id, grade FROM judge_models_tiny ORDER BY ALL").to_pylist()
    assert {r["query_id"] for r in labels} == {"q1", "q3", "q5", "q7"}
    assert {(r["doc_id"], r["grade"]) for r in labels} == {("good", 3), ("bad", 0)}
    parents = {p["parent_name"] for p in catalog.lineage("judge_models/tiny").to_pylist() if p["depth"] == 1}
    assert parents == {"judgments/assessor"}

    judge_cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"backend": "cross_encoder",
                                                                             "model": "tiny", "local_below": 1000})})
    folder, ref = resolve_model(judge_cfg)
    manifest = read_manifest(folder)
    assert ref.ref == "judge_models/tiny@v1" and manifest["grade_counts"] == [4, 0, 0, 4]
    assert manifest["label_set"] == "assessor" and manifest["split"] == "odd"
    assert manifest["prior"]["kind"] == "offline-cosine"  # the default: a correction of the cosine judge
    # graded on its own, it needs each pair's cosine (the judge stage reads them from the embed cache)
    p = CrossEncoderGrader(folder).p_grade(["who pays a bounty hunter"] * 2, [PASSAGES["good"], PASSAGES["bad"]],
                                           [0.6, 0.1])
    assert p.shape == (2, 4) and np.allclose(p.sum(1), 1, atol=1e-5)

    # judge the held-out (even) queries with it, through the judge stage
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{q} 0 {d} 0\n" for q in ("q2", "q4", "q6", "q8") for d in ("good", "bad")))
    stage = Judge(judge_cfg, pairs=str(pairs), queries=str(topics), docs=str(docs))
    name = stage.judge()
    assert name.startswith("cross-encoder:tiny@")
    refs, summary = run_one(judge_cfg, stage)
    out = judgments_of(catalog, name)
    assert summary["rows_out"] == 8
    grades = {(r["query_id"], r["doc_id"]): r["grade"] for r in out}
    assert all(grades[(q, "good")] == 3 and grades[(q, "bad")] == 0 for q in ("q2", "q4", "q6", "q8")), grades
    assert all(abs(sum(r["p_grade"]) - 1) < 1e-4 and r["status"] == "ok" for r in out)
    parents = {p["parent_name"] for p in catalog.lineage(label_set(name)).to_pylist() if p["depth"] == 1}
    assert "judge_models/tiny" in parents  # the labels trace back to the labels the judge learnt from

    # the same labels and settings again: nothing is retrained, nothing new is published
    again = train_judge(cfg, "assessor", name="tiny", split="odd", queries=str(topics), docs=str(docs))
    assert again["trained"] is False and again["dataset"] == "judge_models/tiny@v1"


def judgments_of(catalog, judge: str) -> list[dict]:
    return catalog.query("SELECT query_id, doc_id, grade, p_grade, status FROM judgments WHERE judge = ?",
                         [judge]).to_pylist()


def test_a_model_without_four_grades_is_refused(tmp_path, tiny_bert):
    from sentence_transformers.cross_encoder import CrossEncoder

    from tasks.judge.cross_encoder import CrossEncoderGrader

    CrossEncoder(tiny_bert, num_labels=1).save_pretrained(str(tmp_path / "reranker"))
    with pytest.raises(ValueError, match="has 1 output"):
        CrossEncoderGrader(str(tmp_path / "reranker"))


def test_an_unknown_judge_model_names_what_exists(cfg):
    from tasks.judge.cross_encoder import resolve_model

    judge_cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"backend": "cross_encoder",
                                                                             "model": "nope"})})
    with pytest.raises(FileNotFoundError, match="no trained judge yet"):
        resolve_model(judge_cfg)


def test_training_labels_split_by_query_number():
    from tasks.judge.train import in_split, split_of

    assert [split_of(q) for q in ("q49", "q0", "topic-12", "t7b", "x")] == ["odd", "even", "even", "odd", None]
    assert in_split("q1", "all") and in_split("q1", "odd") and not in_split("q1", "even")
    assert pc.sum(pa.array([in_split(q, "odd") for q in TOPICS])).as_py() == 4


def test_a_judge_trained_on_the_cosine_prior_starts_as_it_and_learns_what_it_gets_wrong(tmp_path, tiny_bert):
    """prior=cosine: the head starts at zero, so the untrained model is exactly the cosine judge; training
    moves it toward the labels where the prior disagrees, and grading needs each pair's cosine."""
    from schemas.config import JudgeTraining
    from tasks.judge.cross_encoder import CrossEncoderGrader, prior_logp, read_manifest
    from tasks.judge.offline_judge import grade_probabilities
    from tasks.judge.train import train_cross_encoder

    prior = {"kind": "offline-cosine", "encoder": {}, "thresholds": [0.3, 0.5, 0.7], "temperature": 0.1}
    queries = list(TOPICS.values())
    pairs = pa.table({"query_id": list(TOPICS) * 2, "query_text": queries * 2,
                      "doc_text": [PASSAGES["good"]] * 8 + [PASSAGES["bad"]] * 8, "grade": [3] * 8 + [0] * 8})
    cos = np.array([0.45] * 8 + [0.55] * 8)  # the prior has it backwards: the good passage looks less related
    logp = prior_logp(prior, cos)
    assert logp.shape == (16, 4) and logp[0].argmax() == 1 and logp[-1].argmax() == 2
    params = JudgeTraining(base_model=tiny_bert, epochs=1, batch_size=4, max_length=64, freeze_layers=1,
                           warmup_ratio=0.0)
    untrained = tmp_path / "untrained"
    train_cross_encoder(pairs, untrained, params.model_copy(update={"learning_rate": 1e-12}),
                        prior_logp=logp, prior=prior)
    grader = CrossEncoderGrader(str(untrained))
    assert read_manifest(untrained)["prior"] == prior
    start = grader.p_grade(pairs["query_text"].to_pylist(), pairs["doc_text"].to_pylist(), cos)
    assert np.allclose(start, grade_probabilities(cos, prior["thresholds"], prior["temperature"]), atol=1e-3)
    with pytest.raises(ValueError, match="needs each pair's cosine"):
        grader.p_grade(queries[:1], [PASSAGES["good"]])

    trained = tmp_path / "trained"
    train_cross_encoder(pairs, trained, params.model_copy(update={"epochs": 10, "learning_rate": 2e-2}),
                        prior_logp=logp, prior=prior)
    after = CrossEncoderGrader(str(trained)).p_grade(pairs["query_text"].to_pylist(), pairs["doc_text"].to_pylist(),
                                                     cos)
    idx = np.arange(16)
    truth = np.array([3] * 8 + [0] * 8)
    assert after[idx, truth].mean() > start[idx, truth].mean() + 0.1, (after[idx, truth], start[idx, truth])


def test_train_judge_cli_sets_every_training_field_the_config_has(cfg, tmp_path, tiny_bert, capsys):
    """`--prior none` trains on the grades alone (no cosine prior in the model's manifest); a value
    the config does not allow is a usage error."""
    from flows.cli import main
    from tasks.judge.cross_encoder import read_manifest, resolve_model

    topics, docs = _files(tmp_path)
    _label_set(cfg)
    rc = main(["train-judge", "--labels", "assessor", "--name", "plain", "--split", "odd", "--queries", str(topics),
               "--docs", str(docs), "--catalog", cfg.catalog_path, "--base-model", tiny_bert, "--prior", "none",
               "--warmup-ratio", "0", "--epochs", "1", "--batch-size", "4", "--max-length", "64",
               "--freeze-layers", "1"])
    assert rc == 0, capsys.readouterr()
    judge_cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"backend": "cross_encoder",
                                                                             "model": "plain"})})
    folder, _ = resolve_model(judge_cfg)
    assert read_manifest(folder).get("prior") is None
    assert main(["train-judge", "--labels", "assessor", "--prior", "sometimes", "--catalog", cfg.catalog_path]) == 2
