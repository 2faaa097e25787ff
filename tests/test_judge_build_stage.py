"""The build flow's judge stage on a small published corpus: synthetic queries x FAISS top-k
candidates (+ each query's source for answerability), judged by the offline MiniLM judge."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from schemas.config import config_from_dict
from schemas.tables import DOCUMENTS, QUERIES, embeddings_schema
from tasks.index.stage import Index
from tasks.judge.stage import Judge
from tasks.queries.answerability import Answerability
from tasks.queries.stage import usable_queries
from tasks.runtime.ids import record_id
from tasks.runtime.lifecycle import Run
from tests.stages import run_one, seed

NAMES = ["d_bounty", "d_teeth", "d_smoke", "d_bus"]
ID = {n: record_id(n) for n in NAMES}  # documents carry content-style ids
DOCS = {
    "d_bounty": "Bounty hunters earn a share of the bail, often 10 to 20 percent, for returning a fugitive to court.",
    "d_teeth": "You can estimate a dog's age by its teeth: puppies get adult teeth by about seven months.",
    "d_smoke": "To clean smoke off walls, wash them with a mix of warm water, vinegar and dish soap.",
    "d_bus": "A red double-decker bus waits at a stop in the city centre.",
}
QUERIES_ = {"q_bounty": ("d_bounty", "how do bounty hunters get paid"),
            "q_teeth": ("d_teeth", "tell a dog's age from its teeth"),
            "q_smoke": ("d_bus", "how to remove smoke stains from walls")}  # source is the wrong document


def _queries() -> pa.Table:
    rows = []
    for qid, (did, text) in QUERIES_.items():
        rows.append({"query_id": qid, "doc_id": ID[did], "target_modality": "text", "text": text, "generator": "test",
                     "prompt_version": "v1", "source_text": DOCS[did], "pass_length": True, "pass_copy": True,
                     "pass_dedup": True, "pass_roundtrip": True, "copy_overlap": 0.0,
                     "roundtrip_rank": 1, "passed": True, "reject_reason": None})
    return pa.Table.from_pylist(rows, schema=QUERIES)


@pytest.fixture()
def cfg(tmp_path, minilm):
    cfg = config_from_dict({"corpus": {"root": str(tmp_path), "sources": [{"kind": "manifest", "path": "x.jsonl"}]},
                            "workdir": str(tmp_path / "work"),
                            "judge": {"enabled": True, "top_k": 2, "answerability": True, "local_below": 1000}})
    docs = pa.Table.from_pylist([{"doc_id": ID[d], "modality": "text", "text": t, "source": "test"}
                                 for d, t in DOCS.items()], schema=DOCUMENTS)
    vec = minilm.embed(list(DOCS.values()))
    ids = [ID[d] for d in DOCS]
    emb = pa.table({"item_id": ids, "item_kind": ["document"] * 4, "doc_id": ids,
                    "content_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in DOCS.values()],
                    "space": [minilm.name] * 4,
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), vec.shape[1])})
    for name, table in (("documents", docs), ("queries", _queries()), ("embeddings/text", emb)):
        seed(cfg, name, table.cast(embeddings_schema(vec.shape[1])) if name.startswith("emb") else table)
    run_one(cfg, Index(cfg))
    return cfg


def test_judge_stage_judges_topk_and_answerability_is_its_own_dataset(cfg):
    judge = Judge(cfg)
    refs, stage = run_one(cfg, judge)
    name = judge.outputs()[0]
    assert set(refs) == {name} and name.startswith("judgments/offline-cosine")
    run = Run.open(cfg)
    by = {v: k for k, v in ID.items()}
    j = [r | {"doc_id": by[r["doc_id"]]} for r in run.read(name).to_pylist()]
    pairs = {(r["query_id"], r["doc_id"]) for r in j}
    assert len(j) == len(pairs) and {r["status"] for r in j} == {"ok"}
    assert ("q_bounty", "d_bounty") in pairs and ("q_smoke", "d_smoke") in pairs  # top-k found them
    assert ("q_smoke", "d_bus") in pairs  # the source pair is judged too
    expected = {(r["query_id"], r["doc_id"]): r["expected_grade"] for r in j}
    bounty = {d: e for (q, d), e in expected.items() if q == "q_bounty"}
    assert len(bounty) == 2 and max(bounty, key=bounty.get) == "d_bounty"
    grade = {(r["query_id"], r["doc_id"]): r["grade"] for r in j}
    assert grade[("q_smoke", "d_bus")] < 2
    lineage = run.catalog.lineage(name).to_pylist()
    assert {"documents", "queries", "indexes/text"} <= {r["parent_name"] for r in lineage}
    # the three queries were embedded once (the pool search), their cosines read them back from the embed
    # cache; each judged document text the cache did not hold was embedded once; the pairs judged once
    docs = len({r["doc_id"] for r in j})
    assert (stage["rows_in"], stage["rows_out"], stage["model_calls"], stage["cache_hits"]) == (
        len(j), len(j), len(j) + 3 + docs, 3)

    refs_a, _ = run_one(cfg, Answerability(cfg))
    verdict = {r["query_id"]: r for r in run.read("query_answerability").to_pylist()}
    for qid, (did, _) in QUERIES_.items():
        assert verdict[qid]["pass_answerable"] is (grade[(qid, did)] >= 2)
    assert verdict["q_smoke"]["pass_answerable"] is False
    usable = usable_queries(run.read("queries"), run.read("query_answerability"))
    assert "q_smoke" not in usable["query_id"].to_pylist()
    assert run.read("queries").num_rows == 3  # the queries dataset has one writer: it was not rewritten

    again_refs, again = run_one(cfg, Judge(cfg))
    assert again_refs[name].version == refs[name].version  # nothing new to publish
    # every lookup of the first run is a cache hit now: the pairs, the documents, the queries twice
    assert (again["model_calls"], again["cache_hits"]) == (0, len(j) + docs + 2 * 3)
    agree = run.catalog.query("SELECT count(*) AS n FROM judgment_label_distribution").to_pylist()
    assert agree[0]["n"] >= 1  # the SQL views see the published label set


def test_disabled_judge_stage_is_skipped_by_the_build(cfg):
    off = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"enabled": False})})
    assert not Judge(off).enabled() and not Answerability(off).enabled()
