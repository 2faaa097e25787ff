"""The evaluation's measures, all from ir_measures: nDCG@10 (graded gains), Recall@100 and MRR@10
(binary at a relevance level), per query and as the mean over the queries evaluated."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

NAMES = ("ndcg_10", "recall_100", "mrr_10")


def measures(relevance_level: int = 1) -> dict:
    """Column name -> ir_measures measure. nDCG uses the grades as gains, as trec_eval's ndcg_cut does."""
    from ir_measures import RR, R, nDCG

    return {"ndcg_10": nDCG @ 10, "recall_100": R(rel=relevance_level) @ 100, "mrr_10": RR(rel=relevance_level) @ 10}


@dataclass
class Scores:
    mean: dict[str, float]  # measure -> mean over the queries evaluated
    per_query: dict[str, dict[str, float]]  # query_id -> measure -> value

    @property
    def queries(self) -> int:
        return len(self.per_query)


def score(qrels: pa.Table, run: pa.Table, relevance_level: int = 1) -> Scores:
    """Per-query and mean measures of a run (query_id, doc_id, score) against qrels (query_id,
    doc_id, relevance). Queries are those of the qrels that the run answers, as in trec_eval."""
    import ir_measures

    from tasks.judge.trec_io import ir_qrels, ir_run

    ms = measures(relevance_level)
    by_measure = {m: name for name, m in ms.items()}
    q, r = ir_qrels(qrels), ir_run(run)
    per_query: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc(list(ms.values()), q, r):
        per_query.setdefault(m.query_id, {})[by_measure[m.measure]] = float(m.value)
    n = len(per_query)
    mean = {name: (sum(v[name] for v in per_query.values()) / n if n else 0.0) for name in ms}
    return Scores(mean, per_query)


def paired_p(base: Scores, tuned: Scores, measure: str = "ndcg_10") -> float | None:
    """Two-sided paired t-test on the per-query values both runs share; None when it is undefined."""
    import math

    from scipy.stats import ttest_rel

    common = sorted(set(base.per_query) & set(tuned.per_query))
    a = [base.per_query[q][measure] for q in common]
    b = [tuned.per_query[q][measure] for q in common]
    if len(common) < 2 or a == b:
        return None
    p = float(ttest_rel(b, a).pvalue)
    return None if math.isnan(p) else p
