"""Judgment benchmarks.

BENCH judge_scoring: judgments per second from label probabilities (one forward pass) vs
  generate-then-parse (max 8 new tokens), same tiny random causal LM, same pairs, same batch
  size, same run. Pairs are LLMJudge topics x passages, with the real judge prompt
  (`speedup`) and again with a one-line prompt and 200-character passages
  (`compact_prompt_speedup`), where the 8 decoding steps weigh more against the prompt's
  forward pass. BENCH_JUDGE_PAIRS (default 2000), BENCH_JUDGE_BATCH (16),
  BENCH_JUDGE_DOC_CHARS (600).
BENCH agreement_sql: the full agreement table (kappa, alpha, binarized kappas, leniency) in
  DuckDB over BENCH_AGREEMENT_PAIRS (default 1,000,000) synthetic judgments from 10 judges
  (judge_00 is the reference); the baseline is scikit-learn + krippendorff on the same labels.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
LLMJUDGE = REPO.parent / "shared" / "data" / "llmjudge" / "data"


def _pairs(n: int):
    from tasks.judge import scoring as J
    from tasks.judge.pools import read_passages
    from tasks.judge.trec_io import read_topics

    t = read_topics(LLMJUDGE / "llm4eval_query_2024.txt").table
    topics = dict(zip(t["query_id"].to_pylist(), t["text"].to_pylist()))
    passages = read_passages(LLMJUDGE / "llm4eval_test_passages_2024.jsonl")
    keys = [line.split() for line in (LLMJUDGE / "llm4eval_test_qrel_2024.txt").read_text().splitlines() if line.strip()]
    keys = (keys * (n // len(keys) + 1))[:n]
    return pa.table({"query_id": [k[0] for k in keys], "query_text": [topics[k[0]] for k in keys],
                     "doc_id": [k[2] for k in keys], "doc_text": [passages[k[2]] for k in keys],
                     "image_path": pa.array([None] * n, pa.string())}, schema=J.PAIRS)


COMPACT_PROMPT = "Query: {query}\nPassage: {document}\nRelevance of the passage to the query, 0 to 3:"


def _scoring_rates(model: str, pairs: pa.Table, batch: int, doc_chars: int, prompts_dir: str | None) -> dict:
    """Judgments per second for each scoring method over the same pairs (after a warm-up batch)."""
    from schemas.config import JudgeConfig
    from tasks.judge import scoring as J

    results = {}
    for scoring in ("label_probs", "generate"):
        cfg = JudgeConfig(backend="hf", model=model, batch_size=batch, device="cpu", scoring=scoring,
                          max_doc_chars=doc_chars, max_new_tokens=8, prompts_dir=prompts_dir)
        judge = J.Judge(cfg, "cpu")
        judge(pairs.slice(0, batch))
        t0 = time.perf_counter()
        out = judge(pairs)  # the judge batches by `batch`, similar prompt lengths together
        results[scoring] = (pairs.num_rows / (time.perf_counter() - t0), out)
    return results


def bench_judge_scoring() -> dict:
    import torch

    from tests.tiny_models import build_tiny_causal_lm

    n = int(os.environ.get("BENCH_JUDGE_PAIRS", 2000))
    batch = int(os.environ.get("BENCH_JUDGE_BATCH", 16))
    doc_chars = int(os.environ.get("BENCH_JUDGE_DOC_CHARS", 600))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    pairs = _pairs(n)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_causal_lm(Path(tmp) / "tiny")
        full = _scoring_rates(model, pairs, batch, doc_chars, None)
        # the same pairs with a one-line prompt and short passages: decoding weighs more there
        compact_dir = Path(tmp) / "prompts"
        compact_dir.mkdir()
        (compact_dir / "judge_graded.v1.txt").write_text(COMPACT_PROMPT)
        compact = _scoring_rates(model, pairs, batch, 200, str(compact_dir))
    lp_rate, lp = full["label_probs"]
    gen_rate, gen = full["generate"]
    statuses = dict(zip(*np.unique(gen["status"].to_numpy(zero_copy_only=False), return_counts=True)))
    c_speedup = compact["label_probs"][0] / compact["generate"][0]
    line = (f"BENCH judge_scoring speedup={lp_rate / gen_rate:.2f} label_probs_per_s={lp_rate:.1f} "
            f"generate_parse_per_s={gen_rate:.1f} pairs={n} batch={batch} doc_chars={doc_chars} "
            f"compact_prompt_speedup={c_speedup:.2f} "
            f"generate_ok={int(statuses.get('ok', 0))} generate_parse_errors={int(statuses.get('parse_error', 0))} "
            f"label_probs_ok={int(np.sum(lp['status'].to_numpy(zero_copy_only=False) == 'ok'))}")
    print(line, flush=True)
    return {"speedup": lp_rate / gen_rate, "compact_speedup": c_speedup}


def _synthetic_judgments(path: Path, n_total: int, judges: int = 10, seed: int = 0) -> dict:
    """n_total judgments: judges x (n_total / judges) pairs; judge_00 is the reference."""
    rng = np.random.default_rng(seed)
    n = n_total // judges
    ref = rng.choice(4, n, p=[0.45, 0.28, 0.18, 0.09])
    qids = np.char.add("q", (np.arange(n) // 100).astype(str))
    dids = np.char.add("d", np.arange(n).astype(str))
    labels = {}
    writer = None
    for j in range(judges):
        if j == 0:
            g = ref
        else:
            noise = rng.integers(-1, 2, n) * (rng.random(n) < 0.3 + 0.05 * j)
            g = np.clip(ref + noise + (rng.random(n) < 0.05) * rng.integers(-3, 4, n), 0, 3)
        labels[f"judge_{j:02d}"] = g
        p = np.zeros((n, 4), np.float32)
        p[np.arange(n), g] = 1.0
        t = pa.table({"query_id": qids, "doc_id": dids, "judge": np.full(n, f"judge_{j:02d}"),
                      "grade": g.astype(np.int8),
                      "p_grade": pa.FixedSizeListArray.from_arrays(pa.array(p.ravel()), 4),
                      "expected_grade": g.astype(np.float32), "status": np.full(n, "ok"),
                      "raw": pa.nulls(n, pa.string())})
        if writer is None:
            writer = pq.ParquetWriter(path, t.schema)
        writer.write_table(t)
    writer.close()
    return labels


def bench_agreement_sql() -> dict:
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    from tasks.judge import analysis
    from tasks.runtime.catalog import Catalog

    n_total = int(os.environ.get("BENCH_AGREEMENT_PAIRS", 1_000_000))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "judgments.parquet"
        labels = _synthetic_judgments(path, n_total)
        catalog = Catalog(Path(tmp) / "catalog.duckdb")
        analysis.view_parquet(catalog, str(path))
        t0 = time.perf_counter()
        table = analysis.agreement(catalog, "judge_00")
        sql_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ref = labels["judge_00"]
        base = {}
        for name, g in labels.items():
            if name == "judge_00":
                continue
            base[name] = (cohen_kappa_score(ref, g),
                          krippendorff.alpha(reliability_data=np.vstack([ref, g]).astype(float),
                                             level_of_measurement="ordinal", value_domain=[0, 1, 2, 3]),
                          *[cohen_kappa_score(ref >= c, g >= c) for c in (1, 2, 3)], g.mean() - ref.mean())
        base_s = time.perf_counter() - t0
    rows = table.to_pylist()
    worst = max(abs(r["kappa"] - base[r["judge"]][0]) + abs(r["alpha"] - base[r["judge"]][1]) for r in rows)
    print(f"BENCH agreement_sql seconds={sql_s:.3f} pairs={n_total} judges=10 rows={len(rows)} "
          f"baseline_sklearn_krippendorff_seconds={base_s:.3f} speedup={base_s / sql_s:.2f} "
          f"max_abs_diff={worst:.1e}", flush=True)
    return {"seconds": sql_s}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    only = {s.strip() for s in os.environ.get("BENCH_JUDGMENTS_ONLY", "").split(",") if s.strip()}
    if not only or "agreement_sql" in only:
        bench_agreement_sql()
    if not only or "judge_scoring" in only:
        bench_judge_scoring()


if __name__ == "__main__":
    main()
