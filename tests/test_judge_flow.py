"""The Prefect `judge` flow end to end: LLMJudge pairs from files, judged on local Ray by the
offline MiniLM judge, published with accounting; a re-run is all cache hits."""
from __future__ import annotations

import json

import pytest

from tests.conftest import LLMJUDGE

DATA = LLMJUDGE / "data"


@pytest.mark.slow
def test_judge_flow_from_trec_files(tmp_path, ray_local, prefect_harness, capsys):
    from flows.cli import main

    pairs = tmp_path / "pairs.txt"
    lines = (DATA / "llm4eval_test_qrel_2024.txt").read_text().splitlines()[:40]
    pairs.write_text("\n".join(lines + ["q49 0 no-such-passage"]) + "\n")
    catalog = tmp_path / "cat" / "catalog.duckdb"
    args = ["judge", "--catalog", str(catalog), "--pairs", str(pairs), "--queries",
            str(DATA / "llm4eval_query_2024.txt"), "--docs", str(DATA / "llm4eval_test_passages_2024.jsonl")]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["rows_in"] == 41 and first["rows_out"] == 40 and first["rows_quarantined"] == 1
    topics = dict(line.split("\t", 1) for line in (DATA / "llm4eval_query_2024.txt").read_text().splitlines())
    passages = {r["docid"]: r["doc"] for r in map(json.loads, (DATA / "llm4eval_test_passages_2024.jsonl").open())}
    distinct = {(topics[ln.split()[0]], passages[ln.split()[2]]) for ln in lines}
    texts = {t for pair in distinct for t in pair}
    # pairs with the same texts share one model call; each distinct text is embedded once for its cosine
    assert first["model_calls"] == len(distinct) + len(texts) and len(distinct) <= 40
    assert first["statuses"]["ok"] == 40 and first["published"]
    assert first["judge"].startswith("offline-cosine:")

    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cache_hits"] == len(distinct) + len(texts) and second["model_calls"] == 0 and not second["published"]

    from tasks.runtime.catalog import Catalog

    cat = Catalog(catalog)
    runs = cat.query("SELECT flow, status FROM runs ORDER BY started_at").to_pylist()
    assert runs == [{"flow": "judge", "status": "completed"}] * 2
    stage = cat.query("SELECT rows_in, rows_out, rows_quarantined, model_calls, cache_hits FROM stage_runs "
                      "WHERE stage = 'judge' ORDER BY started_at").to_pylist()
    assert stage[0] == {"rows_in": 41, "rows_out": 40, "rows_quarantined": 1, "model_calls": len(distinct) + len(texts),
                        "cache_hits": 0}
    q = cat.query("SELECT reason FROM quarantine WHERE stage = 'judge'").to_pylist()
    assert "'no-such-passage' has no text" in q[0]["reason"] and "not in the file" in q[0]["reason"]

    # the reference labels for the same pairs, then agreement through the CLI on catalog judges
    assert main(["import-qrels", "--catalog", str(catalog), str(DATA / "llmjudge_test_qrel_idx.txt")]) == 0
    capsys.readouterr()
    assert main(["agreement", "--catalog", str(catalog), "--reference", "llmjudge_test_qrel_idx",
                 "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [r["judge"] for r in table] == [first["judge"]] and table[0]["n_pairs"] == 40
