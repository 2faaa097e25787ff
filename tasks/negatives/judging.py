"""Judge what the judge filter needs, through the judge stage, before mining.

The UniME-V2 filter drops a candidate the judge scores like the positive (above s_judge(pos) − β)
or grades ≥ drop_grade; it can only decide for pairs that are judged. So, with
`judge_filter.unjudged: judge`, mining first asks the configured judge about exactly the pairs it
needs, as a run of the judge stage (its labels land in `judgments/<judge>`, cached and with
lineage, like any other judgments):

1. every positive with no label (the β rule needs s_judge of the positive);
2. per query, the unjudged candidates the window reaches: walking the candidates in rank order
   (after every other policy), as many unjudged ones as survivors are still missing, doubling
   each round, until the window holds `num_negatives` survivors (range_min + the window for
   random/cyclical sampling) or the retrieved list (depth up to `judge_filter.max_depth`) ends.

A pair the judge was asked about and could not grade is never asked again in the same run; the
filter then drops it as unjudged and the report counts it.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.negatives.mine import candidate_batch, doc_modalities, judge_lookup, positives_by_query
from tasks.negatives.plan import MiningPlan
from tasks.negatives.policies import eligible_after

log = logging.getLogger(__name__)

MAX_ROUNDS = 8  # lookahead doubles each round, so 8 rounds reach 128x the missing survivors


def judge_what_mining_needs(inputs, config, queries: pa.Table, vectors: np.ndarray, positives: pa.Table, index,
                            plan: MiningPlan, judgments: pa.Table | None, lexical=None,
                            documents: pa.Table | None = None) -> tuple[pa.Table | None, dict]:
    """Judge the positives and the candidates the filter needs; returns (judgments, report)."""
    from tasks.judge.stage import Judge, label_set
    from tasks.runtime.runner import run_stage

    cfg = config.negatives
    jf = cfg.judge_filter
    report = {"judge": None, "rounds": 0, "pairs_asked": 0, "pairs_not_graded": 0}
    if not jf.enabled or jf.unjudged != "judge":
        return judgments, report | {"judging": f"off (judge_filter.unjudged: {jf.unjudged})"}
    if inputs.run is None:
        return judgments, report | {"judging": "off (no run to judge in: unjudged pairs are dropped)"}
    name = Judge(config, pool="mining", pairs_of=[]).judge()
    report["judge"] = name
    if jf.judges and name not in jf.judges:
        log.warning("judge filter: the configured judge %s is not among judge_filter.judges %s; nothing is judged "
                    "and unjudged candidates are dropped", name, jf.judges)
        return judgments, report | {"judging": "off (the configured judge is not one of judge_filter.judges)"}
    pos_map = positives_by_query(positives)
    asked: set[tuple[str, str]] = set()
    doc_modality = doc_modalities(documents, cfg)
    for round_ in range(MAX_ROUNDS):
        judged = judge_lookup(judgments, jf.judges)
        need = needed_pairs(queries, vectors, pos_map, index, cfg, plan, judged, asked, 2 ** round_, lexical,
                            doc_modality)
        if not need:
            break
        report["rounds"] += 1
        report["pairs_asked"] += len(need)
        asked.update((q, d) for q, _, d in need)
        refs = run_stage(inputs.run, Judge(config, pool="mining", pairs_of=[list(p) for p in need]))
        ref = refs[label_set(name)]
        inputs.refs[ref.name] = ref  # the negatives' lineage names the labels they were filtered with
        fresh = inputs.run.read(ref.name, ref.version)
        judgments = fresh if judgments is None else pa.concat_tables(
            [judgments.filter(pc.not_equal(judgments["judge"], name)), fresh.cast(judgments.schema)],
            promote_options="default")
    judged = judge_lookup(judgments, jf.judges)
    report["pairs_not_graded"] = sum(1 for k in asked if k not in judged)
    report["judging"] = f"{report['pairs_asked']} pairs judged by {name} in {report['rounds']} rounds"
    return judgments, report


def needed_pairs(queries: pa.Table, vectors: np.ndarray, pos_map: dict[str, list[str]], index, cfg, plan: MiningPlan,
                 judged: dict, asked: set, factor: int, lexical=None,
                 doc_modality: dict | None = None) -> list[tuple[str, str, str]]:
    """(query_id, query_text, doc_id) pairs to judge now: unlabelled positives, then per query the
    next unjudged candidates, `factor` times as many as survivors are still missing."""
    jf = cfg.judge_filter
    want_survivors = plan.range_min + (plan.num_negatives if cfg.sampling == "top"
                                       else plan.range_max - plan.range_min)
    qids, texts = queries["query_id"].to_pylist(), queries["text"].to_pylist()
    rows = [i for i, q in enumerate(qids) if pos_map.get(q)]
    expected = {}
    if cfg.modality.enabled:
        from tasks.negatives.mine import expected_modalities

        expected = expected_modalities(queries, pos_map, doc_modality or {})
    out: list[tuple[str, str, str]] = []
    for start in range(0, len(rows), cfg.query_batch):
        chunk = rows[start:start + cfg.query_batch]
        bq, bt = [qids[i] for i in chunk], [texts[i] for i in chunk]
        bv = np.asarray(vectors, np.float32)[chunk]
        pos_ids = [pos_map[q] for q in bq]
        for q, t, pos in zip(bq, bt, pos_ids):
            out += [(q, t, d) for d in pos if (q, d) not in judged and (q, d) not in asked]
        pos_pos = index.doc_positions(pos_ids)
        scores = index.doc_scores(bv, pos_pos)
        pos_min = np.array([np.min(s[np.isfinite(s)]) if np.isfinite(s).any() else np.nan for s in scores], np.float32)
        batch = candidate_batch(index, cfg, plan, bq, bt, bv, pos_ids, pos_pos, pos_min, judged, lexical,
                                doc_modality, expected)
        elig = eligible_after(batch, cfg, judge=False)[0]
        c = batch.cands
        with np.errstate(invalid="ignore"):
            survives = (batch.judge_grade < jf.drop_grade) & ~(batch.judge_score > batch.pos_judge[:, None] - jf.beta)
        for i, (q, t) in enumerate(zip(bq, bt)):
            known, missing_pick = 0, []
            for col in np.flatnonzero(elig[i]):
                if known >= want_survivors:
                    break
                d = c.universe[c.doc[i, col]]
                if not np.isnan(batch.judge_score[i, col]):
                    known += bool(survives[i, col])
                elif (q, d) not in asked:
                    missing_pick.append(d)
                    if len(missing_pick) >= (want_survivors - known) * factor:
                        break
            out += [(q, t, d) for d in missing_pick]
    return out
