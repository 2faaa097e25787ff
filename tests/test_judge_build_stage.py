"""The build flow's judge stage on a small published corpus: synthetic queries x FAISS top-k
candidates (+ each query's source for answerability), judged by the offline MiniLM judge."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from schemas.config import config_from_dict
from schemas.tables import DOCUMENTS, QUERIES, embeddings_schema
from tasks import judge as J
from tasks.runtime.context import RunContext
from tasks.runtime.ids import record_id
from tasks.runtime.publish import publish

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
                     "pass_dedup": True, "pass_roundtrip": True, "pass_answerable": None, "copy_overlap": 0.0,
                     "roundtrip_rank": 1, "passed": True, "reject_reason": None})
    return pa.Table.from_pylist(rows, schema=QUERIES)


@pytest.fixture()
def ctx(tmp_path, minilm):
    cfg = config_from_dict({"corpus": {"root": str(tmp_path), "sources": [{"kind": "manifest", "path": "x.jsonl"}]},
                            "workdir": str(tmp_path / "work"),
                            "judge": {"enabled": True, "top_k": 2, "answerability": True, "local_below": 1000}})
    c = RunContext.open(cfg)
    c.run_id = c.catalog.start_run("build", cfg.name, "fp", "{}")
    docs = pa.Table.from_pylist([{"doc_id": ID[d], "modality": "text", "text": t, "source": "test"}
                                 for d, t in DOCS.items()], schema=DOCUMENTS)
    vec = minilm.embed(list(DOCS.values()))
    ids = [ID[d] for d in DOCS]
    emb = pa.table({"item_id": ids, "item_kind": ["document"] * 4, "doc_id": ids,
                    "content_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in DOCS.values()],
                    "space": [minilm.name] * 4,
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), vec.shape[1])})
    for name, table in (("documents", docs), ("queries", _queries()), ("embeddings/text", emb)):
        publish(c.catalog, c.root, name, table.cast(embeddings_schema(vec.shape[1])) if name.startswith("emb") else table)
    return c


def test_judge_stage_judges_topk_and_records_answerability(ctx):
    refs = J.judge_task.fn(ctx)
    assert set(refs) == {"judgments", "queries"}
    name = {v: k for k, v in ID.items()}
    j = [r | {"doc_id": name[r["doc_id"]]} for r in ctx.read("judgments").to_pylist()]
    pairs = {(r["query_id"], r["doc_id"]) for r in j}
    assert len(j) == len(pairs) and {r["status"] for r in j} == {"ok"}
    assert ("q_bounty", "d_bounty") in pairs and ("q_smoke", "d_smoke") in pairs  # top-k found them
    assert ("q_smoke", "d_bus") in pairs  # the source pair is judged too
    expected = {(r["query_id"], r["doc_id"]): r["expected_grade"] for r in j}
    bounty = {d: e for (q, d), e in expected.items() if q == "q_bounty"}
    assert len(bounty) == 2 and max(bounty, key=bounty.get) == "d_bounty"
    grade = {(r["query_id"], r["doc_id"]): r["grade"] for r in j}
    q = {r["query_id"]: r for r in ctx.read("queries").to_pylist()}
    assert grade[("q_smoke", "d_bus")] < 2
    assert q["q_smoke"]["pass_answerable"] is False and q["q_smoke"]["passed"] is False
    assert "answerable" in q["q_smoke"]["reject_reason"]
    for qid, (did, _) in QUERIES_.items():
        assert q[qid]["pass_answerable"] is (grade[(qid, did)] >= 2)
    lineage = ctx.catalog.lineage("judgments").to_pylist()
    assert {"documents", "queries", "embeddings/text"} <= {r["parent_name"] for r in lineage}

    stage = ctx.catalog.query("SELECT rows_in, rows_out, model_calls, cache_hits FROM stage_runs "
                              "WHERE stage = 'judge'").to_pylist()
    assert stage == [{"rows_in": len(j), "rows_out": len(j), "model_calls": len(j), "cache_hits": 0}]
    again = J.judge_task.fn(ctx)
    assert again["judgments"].version == refs["judgments"].version  # nothing new to publish
    second = ctx.catalog.query("SELECT model_calls, cache_hits FROM stage_runs WHERE stage = 'judge' "
                               "ORDER BY started_at DESC LIMIT 1").to_pylist()[0]
    assert second == {"model_calls": 0, "cache_hits": len(j)}
    agree = ctx.catalog.query("SELECT count(*) AS n FROM judgment_label_distribution").to_pylist()
    assert agree[0]["n"] >= 1  # the SQL views see the published judgments


def test_disabled_judge_stage_does_nothing(ctx):
    ctx.config.judge.enabled = False
    assert J.judge_task.fn(ctx) == {}
    assert ctx.current("judgments") is None
