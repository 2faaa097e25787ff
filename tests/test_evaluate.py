"""The closed loop end to end on the sample corpus: the `evaluate` flow builds the corpus (with a
tiny random-weight encoder, so it runs in seconds), imports human qrels, mines each training-data
variant, exports, fine-tunes with SentenceTransformerTrainer + MNRL and evaluates base and tuned
models with ir_measures. Real Prefect, Ray, DuckDB and GX throughout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from schemas.tables import EVALUATIONS, MODELS
from tasks.runtime.catalog import Catalog
from tasks.runtime.publish import read
from tests.test_build_flow import make_config
from tests.test_queries_flow import artifacts


def eval_files(tmp: Path) -> tuple[Path, Path]:
    """Held-out human captions of the sample's COCO images as queries; the image's document is the
    answer (grade 3), qrels name documents by the source's own ids (coco:<image id>)."""
    from schemas.config import load_config
    from tests.conftest import SAMPLE_CONFIG

    coco = json.loads((load_config(SAMPLE_CONFIG).corpus_root / "captions_coco.json").read_text())
    caps: dict[int, list[str]] = {}
    for a in coco["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"].strip())
    ids = sorted(caps)[:12]
    topics, qrels = tmp / "topics.tsv", tmp / "human.qrels"
    topics.write_text("".join(f"c{i}\t{caps[i][3]}\n" for i in ids))
    qrels.write_text("".join(f"c{i} 0 coco:{i} 3\nc{i} 0 coco:{ids[(n + 1) % len(ids)]} 0\n"
                             for n, i in enumerate(ids)))
    return topics, qrels


@pytest.fixture(scope="module")
def loop(prefect_harness, ray_local, tiny_sentence_model, tmp_path_factory):
    from flows.evaluate import evaluate_flow

    tmp = tmp_path_factory.mktemp("evaluate")
    tiny = {"model": tiny_sentence_model}
    config = make_config(tmp, embed={"text": tiny, "local_below": 10**6}, tree={"enabled": False},
                         judge={"enabled": True, "local_below": 10**6},  # MiniLM: a random encoder grades all alike
                         negatives={"num_negatives": 2, "judge_filter": {"enabled": True}},
                         export={"out": str(tmp / "exports"), "dev_fraction": 0.0},
                         evaluate={"train": {"model": tiny_sentence_model, "batch_size": 4, "max_steps": 3,
                                             "learning_rate": 1e-3, "max_seq_length": 32},
                                   "policies": {"margin": {"relative_margin": 0.05}}})
    topics, qrels = eval_files(tmp)
    result = evaluate_flow(config_path=str(config), build=True, qrels=str(qrels), queries=str(topics),
                           variants=["export"], ablation=True)
    return tmp, config, result


def test_base_and_every_variant_are_evaluated_into_the_catalog(loop):
    tmp, config, result = loop
    cat = Catalog(result["catalog"])
    ev = read(cat, cat.data_root(), "evaluations")
    assert ev.schema.equals(EVALUATIONS)
    rows = {r["variant"]: r for r in ev.to_pylist()}
    assert set(rows) == {"base", "export", "in_batch", "mined", "judge_filtered", "margin"}
    assert result["eval_set"] == "judgments/human" and result["counts"]["queries"] == 12
    assert result["counts"]["labels_outside_corpus"] == 0  # coco:<id> resolved to our doc ids
    base = rows.pop("base")
    assert base["role"] == "base" and base["model_id"] is None and base["ndcg_10_gain"] is None
    for name, r in rows.items():
        assert r["role"] == "tuned" and r["queries"] == 12 and r["train_pairs"] > 0
        assert r["ndcg_10_gain"] == pytest.approx(r["ndcg_10"] - base["ndcg_10"])
        per_query = json.loads(r["per_query"])
        assert set(per_query) == set(json.loads(base["per_query"])) and len(per_query) == 12
        assert np.mean([v["ndcg_10"] for v in per_query.values()]) == pytest.approx(r["ndcg_10"])
    models = read(cat, cat.data_root(), "models")
    assert models.schema.equals(MODELS) and models.num_rows == 5
    by_variant = {m["variant"]: m for m in models.to_pylist()}
    assert by_variant["in_batch"]["hard_negatives"] == 0
    assert all(by_variant[v]["hard_negatives"] == 1 for v in ("export", "mined", "judge_filtered", "margin"))
    assert by_variant["in_batch"]["export_path"] == by_variant["mined"]["export_path"]  # the same pairs
    # the variants mined into their own datasets, each with the policies that made it
    for v, token in (("mined", None), ("judge_filtered", "judge_filter="), ("margin", "rel_margin=0.05")):
        neg = read(cat, cat.data_root(), f"negatives/ablation-{v}")
        assert neg.num_rows > 0
        policies = set(neg["policy"].to_pylist())
        assert all(token in p for p in policies) if token else not any("judge_filter" in p for p in policies)
    assert cat.current("negatives").version == 1  # the build's own negatives were left alone


def test_lineage_reaches_the_export_the_models_and_the_judgments(loop):
    _, _, result = loop
    cat = Catalog(result["catalog"])
    edges = cat.lineage("evaluations").to_pylist()
    direct = {e["parent_name"] for e in edges if e["depth"] == 1}
    assert {"models", "judgments/human", "documents"} <= direct
    ancestors = {e["parent_name"] for e in edges}
    assert {"negatives", "negatives/ablation-mined", "negatives/ablation-judge_filtered",
            "negatives/ablation-margin", "queries", "indexes/text", "embeddings/text"} <= ancestors
    ev = cat.query("SELECT variant, model, model_id, export_path FROM evaluations WHERE role = 'tuned'").to_pylist()
    models = {m["model_id"]: m for m in cat.query("SELECT * FROM models").to_pylist()}
    meta = cat.meta("evaluations", cat.current("evaluations").version)
    for r in ev:
        m = models[r["model_id"]]
        assert m["path"] == r["model"] and m["export_path"] == r["export_path"]
        assert meta["models"][r["variant"]] == {"model": r["model"], "export": r["export_path"]}
        card = json.loads((Path(r["export_path"]) / "card.json").read_text())
        negatives_name = m["negatives"].split("@v")[0]
        assert any(s["name"] == negatives_name and f"v{s['version']}" == m["negatives"].split("@")[1]
                   for s in card["sources"])  # the export says which negatives version it holds


def test_the_tuned_model_differs_from_the_base_and_has_a_card(loop, tiny_sentence_model):
    from sentence_transformers import SentenceTransformer

    from tasks.evaluate.train import weights_sha256

    _, _, result = loop
    base = SentenceTransformer(tiny_sentence_model, device="cpu")
    text = ["a man riding a horse on the beach", "two dogs playing in the snow"]
    ref = base.encode(text)
    base_sha = weights_sha256(tiny_sentence_model)
    for variant, m in result["models"].items():
        path = Path(m["path"])
        assert path.parent.name == "models" and path.name == m["model_id"]
        assert m["weights_sha256"] == weights_sha256(path) != base_sha
        tuned = SentenceTransformer(str(path), device="cpu")
        assert not np.allclose(tuned.encode(text), ref, atol=1e-4)
        assert tuned.max_seq_length == base.max_seq_length  # encodes as the base does; trained shorter
        card = (path / "README.md").read_text()
        assert "MultipleNegativesRankingLoss" in card and "corpusforge" in card
        assert m["train_steps"] == 3 and np.isfinite(m["loss"])


def test_a_prefect_artifact_compares_base_and_tuned(loop):
    arts = artifacts(["evaluate-sample"])
    assert arts, "no evaluate artifact"
    md = arts[-1].data
    for variant in ("base", "export", "in_batch", "mined", "judge_filtered", "margin"):
        assert f"| {variant} |" in md
    assert "nDCG@10" in md and "Recall@100" in md and "MRR@10" in md


def test_a_second_run_reuses_the_current_export_and_the_cli_prints_the_table(loop, capsys):
    from flows.cli import main

    tmp, config, result = loop
    before = sorted(p.name for p in (tmp / "exports").iterdir())
    assert main(["evaluate", "--config", str(config), "--judge", "human", "--queries", str(tmp / "topics.tsv"),
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["base", "export"]
    assert sorted(p.name for p in (tmp / "exports").iterdir()) == before  # no new export: the current one served
    cat = Catalog(result["catalog"])
    assert cat.current("evaluations").version == 2
    # the upsert kept the ablation rows of the first run beside the new export row
    runs = cat.query("SELECT variant, run_id FROM evaluations ORDER BY variant").to_pylist()
    assert {r["variant"] for r in runs} == {"base", "export", "in_batch", "mined", "judge_filtered", "margin"}
    assert len({r["run_id"] for r in runs}) == 2


def test_the_gist_loss_trains_with_the_base_model_as_its_guide(tiny_sentence_model, tmp_path):
    """train.loss gist: GISTEmbedLoss guided by the frozen base model; it learns something other
    than MNRL does from the same rows, and the card says which loss trained the model."""
    import pyarrow as pa

    from schemas.config import TrainConfig
    from tasks.evaluate.train import TRAIN_FILE, fine_tune, weights_sha256

    topics = ["horses on a beach", "dogs in the snow", "a red bicycle", "a plate of pasta", "a city at night",
              "boats in a harbour", "children playing football", "a cat on a sofa"]
    rows = {"anchor": [f"photo of {t}" for t in topics], "positive": [f"a picture showing {t}" for t in topics],
            "negative_1": [f"a picture showing {t}" for t in topics[1:] + topics[:1]]}
    (tmp_path / "export" / "data").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "export" / TRAIN_FILE)
    trained = {}
    for loss in ("gist", "mnrl"):
        cfg = TrainConfig(model=tiny_sentence_model, loss=loss, batch_size=4, max_steps=2, learning_rate=1e-3,
                          max_seq_length=32, warmup_ratio=0.0)
        trained[loss] = fine_tune(str(tmp_path / "export"), "mined", True, cfg, str(tmp_path / "models"), "t")
    card = (Path(trained["gist"]["path"]) / "README.md").read_text()
    assert "GISTEmbedLoss" in card
    shas = {m["weights_sha256"] for m in trained.values()} | {weights_sha256(tiny_sentence_model)}
    assert len(shas) == 3 and all(np.isfinite(m["loss"]) for m in trained.values())


def test_the_saved_model_is_the_wise_ft_interpolation_of_base_and_fine_tuned(tiny_sentence_model, tmp_path):
    """train.tuned_weight a: every weight of the saved model is a x fine-tuned + (1 - a) x base, where
    fine-tuned is what the same training with tuned_weight 1 saves (training is seeded)."""
    import pyarrow as pa
    from safetensors.torch import load_file

    from schemas.config import TrainConfig
    from tasks.evaluate.train import TRAIN_FILE, WEIGHTS, fine_tune

    topics = ["horses on a beach", "dogs in the snow", "a red bicycle", "a plate of pasta"]
    rows = {"anchor": [f"photo of {t}" for t in topics], "positive": [f"a picture showing {t}" for t in topics],
            "negative_1": [f"a picture showing {t}" for t in topics[1:] + topics[:1]]}
    (tmp_path / "export" / "data").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "export" / TRAIN_FILE)
    weights = {}
    for a in (1.0, 0.25):
        cfg = TrainConfig(model=tiny_sentence_model, batch_size=4, max_steps=2, learning_rate=1e-2,
                          max_seq_length=32, warmup_ratio=0.0, tuned_weight=a)
        m = fine_tune(str(tmp_path / "export"), "mined", True, cfg, str(tmp_path / f"models-{a}"), "t")
        weights[a] = load_file(next(Path(m["path"]).rglob(WEIGHTS)))
        if a < 1:
            assert "WiSE-FT" in (Path(m["path"]) / "README.md").read_text()
    base = load_file(next(Path(tiny_sentence_model).rglob(WEIGHTS)))
    moved = 0
    for k, tuned in weights[1.0].items():
        if tuned.is_floating_point():
            expected = 0.25 * tuned + 0.75 * base[k]
            assert np.allclose(weights[0.25][k].numpy(), expected.numpy(), atol=1e-6), k
            moved += not np.allclose(tuned.numpy(), base[k].numpy())
    assert moved > 0  # the training moved weights, so the check above compared different endpoints
