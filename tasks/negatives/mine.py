"""The mining job: queries in batches through retrieval and the policies, negatives and candidates
out, plus each query's state (what its negatives depend on) for the next refresh."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import NegativesConfig
from schemas.tables import CANDIDATES, NEGATIVES
from tasks.index.lexical import LexicalIndex
from tasks.index.vector import VectorIndex
from tasks.negatives.plan import MiningPlan, plan_mining, policy_tokens
from tasks.negatives.policies import Batch, Selection, select
from tasks.negatives.retrieve import DENSE, RETRIEVER_LABEL, Candidates, retrieve
from tasks.runtime.accounting import Quarantine
from tasks.runtime.ids import record_id

log = logging.getLogger(__name__)

STAGE = "negatives"
TARGET_TO_DOC_MODALITY = {"text": "text", "image": "image", "text+image": "interleaved"}
SHORT_LIST = 20  # query ids listed in the report when queries fall short


def judge_lookup(judgments: pa.Table | None, judges: list[str] | None = None) -> dict[tuple[str, str], tuple[float, int]]:
    """(query_id, doc_id) -> (judge score in [0, 1], highest grade) over the usable judgments.

    The judge score is the expected grade / 3 (the grade / 3 for label sets without
    probabilities), averaged over judges; the grade is the highest any judge gave.
    """
    if judgments is None or judgments.num_rows == 0:
        return {}
    t = judgments.filter(pc.equal(judgments["status"], "ok"))
    if judges:
        t = t.filter(pc.is_in(t["judge"], value_set=pa.array(judges, pa.string())))
    grade = pc.cast(t["grade"], pa.float32())
    score = pc.divide(pc.coalesce(pc.cast(t["expected_grade"], pa.float32()), grade), pa.scalar(3.0, pa.float32()))
    agg = pa.table({"query_id": t["query_id"], "doc_id": t["doc_id"], "score": score,
                    "grade": pc.cast(t["grade"], pa.int8())}).group_by(["query_id", "doc_id"]).aggregate(
        [("score", "mean"), ("grade", "max")])
    return {(q, d): (s, g) for q, d, s, g in zip(agg["query_id"].to_pylist(), agg["doc_id"].to_pylist(),
                                                 agg["score_mean"].to_pylist(), agg["grade_max"].to_pylist())}


def positives_by_query(positives: pa.Table) -> dict[str, list[str]]:
    """query_id -> distinct positive doc ids, in first-seen order."""
    out: dict[str, list[str]] = {}
    for q, d in zip(positives["query_id"].to_pylist(), positives["doc_id"].to_pylist()):
        lst = out.setdefault(q, [])
        if d not in lst:
            lst.append(d)
    return out


def doc_modalities(documents: pa.Table | None, cfg: NegativesConfig) -> dict[str, str]:
    """doc_id -> modality, built only when the modality policy reads it (a dict of the corpus)."""
    if documents is None or not cfg.modality.enabled:
        return {}
    return dict(zip(documents["doc_id"].to_pylist(), documents["modality"].to_pylist()))


def expected_modalities(queries: pa.Table, positives: dict[str, list[str]],
                        doc_modality: dict[str, str]) -> dict[str, str | None]:
    """The modality a query asks for: its target modality, else the modality of its positive."""
    targets = (queries["target_modality"].to_pylist() if "target_modality" in queries.column_names
               else [None] * queries.num_rows)
    out = {}
    for q, t in zip(queries["query_id"].to_pylist(), targets):
        m = TARGET_TO_DOC_MODALITY.get(t) if t else None
        if m is None:
            m = next((doc_modality[d] for d in positives.get(q, []) if d in doc_modality), None)
        out[q] = m
    return out


def query_state_hash(qid: str, text: str, positives: list[str], judged: list, modality: str | None) -> str:
    """What a query's negatives depend on, besides the index and the config."""
    return record_id(qid, text, sorted(positives), sorted(judged, key=str), modality)


@dataclass
class MiningResult:
    negatives: pa.Table
    candidates: pa.Table
    state: pa.Table  # query_id, input_hash, dense_cutoff, dense_full
    report: dict
    quarantine: Quarantine
    plan: MiningPlan | None = None


@dataclass
class _Acc:
    neg: dict[str, list] = field(default_factory=lambda: {n: [] for n in NEGATIVES.names})
    cand: dict[str, list] = field(default_factory=lambda: {n: [] for n in CANDIDATES.names})
    state: dict[str, list] = field(default_factory=lambda: {"query_id": [], "input_hash": [],
                                                            "dense_cutoff": [], "dense_full": []})
    removed: dict[str, int] = field(default_factory=dict)
    eligible: int = 0
    per_query: list[int] = field(default_factory=list)
    short: list[str] = field(default_factory=list)
    empty: int = 0
    c1: int = 0
    c2: int = 0
    unjudged_kept: int = 0
    beta_skipped: int = 0


def mine(queries: pa.Table, query_vectors: np.ndarray, positives: pa.Table, index: VectorIndex,
         cfg: NegativesConfig, *, lexical: LexicalIndex | None = None, judgments: pa.Table | None = None,
         documents: pa.Table | None = None, max_positives: int | None = None, prior=None) -> MiningResult:
    """Mine negatives for `queries` (query_id, text[, target_modality]) with vectors in index space.

    `positives` holds (query_id, doc_id) rows. `max_positives` (most positives of any query) sets
    the default depth; pass the whole job's value when mining a subset so the result equals a
    full run. `prior` (a refresh's tasks.negatives.refresh.Prior) gives the queries whose lists
    merge with the new vectors instead of a search. A query without any positive is quarantined,
    as is one whose positives all lack a vector while a margin or C1 needs the positive's score.
    """
    pos_map = positives_by_query(positives)
    plan = plan_mining(cfg, max_positives if max_positives is not None
                       else max((len(v) for v in pos_map.values()), default=1))
    base_policy = policy_tokens(cfg, plan)
    quarantine = Quarantine(STAGE)
    doc_modality = doc_modalities(documents, cfg)
    if cfg.modality.enabled and not doc_modality:
        raise ValueError("negatives.modality needs the documents table (doc_id, modality)")
    expected = expected_modalities(queries, pos_map, doc_modality) if cfg.modality.enabled else {}
    judged = judge_lookup(judgments, cfg.judge_filter.judges) if cfg.judge_filter.enabled else {}
    judged_by_query: dict[str, list] = {}
    for (q, d), v in judged.items():
        judged_by_query.setdefault(q, []).append((d, *v))
    needs_pos_score = (cfg.absolute_margin is not None or cfg.relative_margin is not None
                       or (cfg.modality.enabled and cfg.modality.c1))

    qids = queries["query_id"].to_pylist()
    texts = queries["text"].to_pylist()
    keep_rows = []
    for i, q in enumerate(qids):
        if not pos_map.get(q):
            quarantine.add(q, "query has no positive document, so it has nothing to contrast negatives with",
                           {"text": texts[i]})
            continue
        keep_rows.append(i)
    acc = _Acc()
    vecs = np.asarray(query_vectors, np.float32)
    for start in range(0, len(keep_rows), cfg.query_batch):
        rows = keep_rows[start:start + cfg.query_batch]
        bq = [qids[i] for i in rows]
        bt = [texts[i] for i in rows]
        bv = vecs[rows]
        pos_ids = [pos_map[q] for q in bq]
        pos_pos = index.doc_positions(pos_ids)
        pos_scores = index.doc_scores(bv, pos_pos)
        pos_min = np.array([np.min(s[np.isfinite(s)]) if np.isfinite(s).any() else np.nan for s in pos_scores],
                           np.float32)
        if needs_pos_score:
            ok = ~np.isnan(pos_min)
            for j in np.flatnonzero(~ok):
                quarantine.add(bq[j], f"no positive of this query has a vector in index '{index.name}', "
                               "so its margins cannot be computed", {"positives": pos_ids[j][:10]})
            if not ok.all():
                sel = np.flatnonzero(ok)
                bq, bt, bv = [bq[j] for j in sel], [bt[j] for j in sel], bv[sel]
                pos_ids, pos_pos, pos_scores = [pos_ids[j] for j in sel], [pos_pos[j] for j in sel], \
                    [pos_scores[j] for j in sel]
                pos_min = pos_min[sel]
        if cfg.judge_filter.enabled and cfg.judge_filter.unjudged != "keep":
            graded = [any((q, d) in judged and judged[(q, d)][0] is not None for d in pos_ids[j])
                      for j, q in enumerate(bq)]
            for j in np.flatnonzero(~np.asarray(graded, bool)):
                quarantine.add(bq[j], "no judge graded a positive of this query, so the judge filter's beta rule "
                               "(drop candidates the judge scores like the positive) cannot be applied",
                               {"positives": pos_ids[j][:10]})
            sel = [j for j, ok in enumerate(graded) if ok]
            bq, bt, bv = [bq[j] for j in sel], [bt[j] for j in sel], bv[sel]
            pos_ids, pos_pos, pos_scores = [pos_ids[j] for j in sel], [pos_pos[j] for j in sel], \
                [pos_scores[j] for j in sel]
            pos_min = pos_min[sel]
        if not bq:
            continue
        batch = candidate_batch(index, cfg, plan, bq, bt, bv, pos_ids, pos_pos, pos_min, judged, lexical,
                                doc_modality, expected, prior)
        cands = batch.cands
        sel = select(batch, cfg, plan)
        _emit(acc, batch, sel, bq, bt, pos_ids, pos_pos, pos_scores, base_policy, plan, cfg)
        for j, q in enumerate(bq):
            dense = (cands.retriever[j] & DENSE) > 0
            full = bool(dense.sum() >= plan.depth)
            acc.state["query_id"].append(q)
            acc.state["input_hash"].append(query_state_hash(
                q, bt[j], pos_ids[j], judged_by_query.get(q, []) if cfg.judge_filter.enabled else [],
                expected.get(q)))
            acc.state["dense_cutoff"].append(float(cands.score[j][dense].min()) if full else float("-inf"))
            acc.state["dense_full"].append(full)

    negatives = pa.table(acc.neg, schema=NEGATIVES)
    candidates = pa.table(acc.cand, schema=CANDIDATES)
    state = pa.table(acc.state, schema=STATE_SCHEMA)
    mined = len(acc.per_query)
    report = {
        "queries": len(qids), "queries_mined": mined, "queries_quarantined": len(quarantine),
        "num_negatives": plan.num_negatives, "range_min": plan.range_min, "range_max": plan.range_max,
        "depth": plan.depth, "max_positives": plan.max_positives,
        "candidates_considered": acc.eligible, "removed": acc.removed,
        "negatives_per_query_mean": round(float(np.mean(acc.per_query)), 4) if mined else 0.0,
        "queries_short": len(acc.short), "queries_without_negatives": acc.empty,
        "short_examples": acc.short[:SHORT_LIST], "rows": negatives.num_rows,
        "modality_c1": acc.c1, "modality_c2": acc.c2,
        "unjudged_kept": acc.unjudged_kept, "beta_skipped_queries": acc.beta_skipped,
    }
    if acc.short:
        log.warning("%d of %d queries got fewer than %d negatives (%d got none); consider raising range_max "
                    "or loosening the margins", len(acc.short), mined, plan.num_negatives, acc.empty)
    return MiningResult(negatives, candidates, state, report, quarantine, plan)


def candidate_batch(index: VectorIndex, cfg: NegativesConfig, plan: MiningPlan, bq: list[str], bt: list[str],
                    bv: np.ndarray, pos_ids: list[list[str]], pos_pos: list[np.ndarray], pos_min: np.ndarray,
                    judged: dict, lexical: LexicalIndex | None = None, doc_modality: dict | None = None,
                    expected: dict | None = None, prior=None) -> Batch:
    """Retrieve a batch of queries' candidates and attach what the policies read (judge scores,
    modalities); the judge filter's lookahead (tasks.negatives.judging) builds the very same batch."""
    cands = retrieve(index, bv, bt, bq, plan.depth, cfg.source, lexical, batch=len(bq), prior=prior)
    batch = Batch(cands, pos_pos, pos_min)
    if cfg.judge_filter.enabled:
        batch.judge_score, batch.judge_grade, batch.pos_judge = _judge_arrays(cands, pos_ids, judged)
    if cfg.modality.enabled:
        mods = np.array([(doc_modality or {}).get(d) for d in cands.universe], dtype=object)
        cand_mod = np.where(cands.doc >= 0, mods[np.where(cands.doc >= 0, cands.doc, 0)], None)
        exp = np.array([(expected or {}).get(q) for q in bq], dtype=object)[:, None]
        batch.wrong_modality = (cand_mod != exp) & (cands.doc >= 0)
    return batch


STATE_SCHEMA = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("input_hash", pa.string(), nullable=False),
    pa.field("dense_cutoff", pa.float32()),  # lowest dense score retrieved; -inf when the list was not full
    pa.field("dense_full", pa.bool_()),
])


def _judge_arrays(cands: Candidates, pos_ids: list[list[str]], judged: dict) -> tuple[np.ndarray, ...]:
    B, K = cands.shape
    js = np.full((B, K), np.nan, np.float32)
    jg = np.full((B, K), -1, np.int8)
    pj = np.full(B, np.nan, np.float32)
    for i, q in enumerate(cands.query_ids):
        for j in np.flatnonzero(cands.doc[i] >= 0):
            hit = judged.get((q, cands.universe[cands.doc[i, j]]))
            if hit is not None:
                js[i, j] = np.nan if hit[0] is None else hit[0]
                jg[i, j] = -1 if hit[1] is None else hit[1]
        scores = [judged[(q, d)][0] for d in pos_ids[i] if (q, d) in judged and judged[(q, d)][0] is not None]
        if scores:
            pj[i] = min(scores)
    return js, jg, pj


def _emit(acc: _Acc, b: Batch, sel: Selection, qids, texts, pos_ids, pos_pos, pos_scores, base_policy,
          plan: MiningPlan, cfg: NegativesConfig) -> None:
    c = b.cands
    acc.eligible += sel.eligible
    for k, v in sel.removed.items():
        acc.removed[k] = acc.removed.get(k, 0) + v
    for i, q in enumerate(qids):
        valid = np.flatnonzero(c.doc[i] >= 0)
        acc.cand["query_id"] += [q] * len(valid)
        acc.cand["doc_id"] += list(c.universe[c.doc[i, valid]])
        acc.cand["rank"] += c.rank[i, valid].tolist()
        acc.cand["score"] += c.score[i, valid].tolist()
        acc.cand["retriever"] += [RETRIEVER_LABEL[int(r)] for r in c.retriever[i, valid]]

        cols = np.flatnonzero(sel.chosen[i])
        acc.per_query.append(len(cols))
        if len(cols) < plan.num_negatives:
            acc.short.append(q)
            acc.empty += len(cols) == 0
        if not len(cols):
            continue
        neg_ids = list(c.universe[c.doc[i, cols]])
        policies = []
        for col in cols:
            extra = {1: ["modality=c1"], 2: ["modality=c2"]}.get(int(sel.modality_class[i, col]), [])
            acc.c1 += int(sel.modality_class[i, col]) == 1
            acc.c2 += int(sel.modality_class[i, col]) == 2
            policies.append(";".join(base_policy[:2] + extra + base_policy[2:]))
        if cfg.judge_filter.enabled and cfg.judge_filter.unjudged == "keep":
            # kept without a label: say so on the negative, and say when the beta rule had no positive
            beta_skipped = bool(np.isnan(b.pos_judge[i]))
            acc.beta_skipped += beta_skipped
            for k, col in enumerate(cols):
                unjudged = bool(np.isnan(b.judge_score[i, col]))
                acc.unjudged_kept += unjudged
                policies[k] += (";judge=unjudged" if unjudged else "") + (";beta=skipped" if beta_skipped else "")
        pscore = {p: (float(s) if np.isfinite(s) else None) for p, s in zip(pos_ids[i], pos_scores[i])}
        for p in pos_ids[i]:
            n = len(cols)
            acc.neg["query_id"] += [q] * n
            acc.neg["pos_doc_id"] += [p] * n
            acc.neg["neg_doc_id"] += neg_ids
            acc.neg["rank"] += c.rank[i, cols].tolist()
            acc.neg["score"] += c.score[i, cols].tolist()
            acc.neg["pos_score"] += [pscore.get(p)] * n
            acc.neg["judge_score"] += ([None if np.isnan(x) else float(x) for x in b.judge_score[i, cols]]
                                       if b.judge_score is not None else [None] * n)
            acc.neg["judge_grade"] += ([None if g < 0 else int(g) for g in b.judge_grade[i, cols]]
                                       if b.judge_grade is not None else [None] * n)
            acc.neg["retriever"] += [RETRIEVER_LABEL[int(r)] for r in c.retriever[i, cols]]
            acc.neg["policy"] += policies
            acc.neg["query_text"] += [texts[i]] * n
