"""The feature judge (cosine, BM25, document length; tasks.judge.features) and the grade decision
of trained judges: trained from a label set through `train-judge --kind features`, graded through
the judge stage, and refused where the backend and the model disagree."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_judge_cross_encoder import _files, _label_set, judgments_of


def test_decision_cuts_reproduce_the_training_grade_distribution():
    from tasks.judge.features import decide, decision_cuts

    rng = np.random.default_rng(0)
    expected = rng.uniform(0, 3, 1000)
    grades = rng.choice(4, size=1000, p=[0.45, 0.28, 0.18, 0.09])
    cuts = decision_cuts(expected, grades)
    got = np.bincount(decide(expected, cuts), minlength=4) / 1000
    assert np.allclose(got, np.bincount(grades, minlength=4) / 1000, atol=0.01)
    assert cuts == sorted(cuts)
    # a grade that never occurs in training is never given
    cuts = decision_cuts(expected, np.where(grades == 3, 2, grades))
    assert decide(np.array([2.99, 10.0]), cuts).max() <= 2


def test_argmax_misses_middle_grades_that_the_decision_gives():
    """Overlapping grades: the cumulative-link argmax never says 1 or 2 here, the cutpoints do."""
    from tasks.judge.features import decide, decision_cuts, expected_grade
    from tasks.judge.offline_judge import grade_probabilities

    score = np.linspace(0, 1, 400)
    p = grade_probabilities(score, [0.3, 0.5, 0.7], 0.3)
    grades = np.digitize(score, [0.3, 0.5, 0.7])
    assert set(p.argmax(1)) <= {0, 3}
    assert set(decide(expected_grade(p), decision_cuts(expected_grade(p), grades))) == {0, 1, 2, 3}


def test_bm25_feature_is_frozen_and_reads_stemmed_query_terms():
    from tasks.judge.features import lexicon, pair_features

    docs = ["dogs running in the park", "cats sleep all day", "a dog runs and runs"]
    lex = lexicon(docs)
    f = pair_features(["running dog", "running dog", "running dog"], docs, [0.1, 0.2, 0.3], lex)
    assert f.shape == (3, 3) and list(f[:, 0]) == [0.1, 0.2, 0.3]
    assert f[1, 1] == 0 and f[0, 1] > 0 and f[2, 1] > 0  # "dogs"/"runs" match "dog"/"running" by their stems
    # the same pair gets the same features whatever else is judged with it
    alone = pair_features(["running dog"], [docs[2]], [0.3], lex)
    assert np.allclose(alone[0], f[2])
    assert pair_features([], [], [], lex).shape == (0, 3)


def test_a_feature_judge_trains_from_a_label_set_and_judges_held_out_queries(tmp_path):
    from flows.train_judge import train_judge
    from schemas.config import catalog_config
    from tasks.judge.cross_encoder import CrossEncoderGrader, read_manifest, resolve_model
    from tasks.judge.features import FORMAT
    from tasks.judge.stage import Judge
    from tasks.runtime.catalog import Catalog
    from tests.stages import run_one

    cfg = catalog_config(tmp_path / "catalog.duckdb", judge={"training": {"kind": "features"}})
    topics, docs = _files(tmp_path)
    _label_set(cfg)
    got = train_judge(cfg, "assessor", name="lexical", split="odd", queries=str(topics), docs=str(docs))
    assert got["trained"] and got["kind"] == "features" and got["pairs"] == 8 and got["quarantined"] == 2

    judge_cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"backend": "features",
                                                                             "model": "lexical"})})
    folder, ref = resolve_model(judge_cfg)
    manifest = read_manifest(folder)
    assert manifest["format"] == FORMAT and manifest["grade_counts"] == [4, 0, 0, 4]
    assert len(manifest["decision"]["cuts"]) == 3 and manifest["lexicon"]["n_docs"] == 2
    with pytest.raises(ValueError, match="feature judge, not a cross-encoder"):
        CrossEncoderGrader(folder)

    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{q} 0 {d} 0\n" for q in ("q2", "q4", "q6", "q8") for d in ("good", "bad")))
    stage = Judge(judge_cfg, pairs=str(pairs), queries=str(topics), docs=str(docs))
    name = stage.judge()
    assert name.startswith("features:lexical@")
    _, summary = run_one(judge_cfg, stage)
    assert summary["rows_out"] == 8
    out = judgments_of(Catalog(cfg.catalog_path), name)
    grades = {(r["query_id"], r["doc_id"]): r["grade"] for r in out}
    assert all(grades[(q, "good")] == 3 and grades[(q, "bad")] == 0 for q in ("q2", "q4", "q6", "q8")), grades
    assert all(abs(sum(r["p_grade"]) - 1) < 1e-4 for r in out)


def test_the_feature_backend_refuses_a_cross_encoder_folder(tmp_path, tiny_bert):
    from sentence_transformers.cross_encoder import CrossEncoder

    from tasks.judge.features import FeatureGrader

    CrossEncoder(tiny_bert, num_labels=4).save_pretrained(str(tmp_path / "ce"))
    with pytest.raises(ValueError, match="is a cross-encoder, not a feature judge"):
        FeatureGrader(str(tmp_path / "ce"))
