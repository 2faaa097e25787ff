"""Judge stage: graded 0-3 relevance of (query, document) pairs, one row per pair and judge.

Pairs come from a pool: the synthetic queries x their top-k candidates in the catalog, or
TREC qrels / run files (or Parquet) with a topics file and a passages file. Image documents
are judged through their captions, or through their pixels by an `openai` VLM judge.

Scoring (status is always set; a grade is never invented):
- `hf`: one forward pass reads the next-token probabilities of "0".."3" at the answer
  position (LabelScorer.label_probabilities): p_grade, grade = argmax, expected_grade.
- `openai`: the first token's top logprobs when the server returns them; otherwise the
  answer is generated and parsed. An answer with no grade in it is `parse_error` (or
  `refused`) with a NULL grade, never 0. A request that fails for good is `error`.
- `offline`: the embedding-similarity grader of tasks.judgments.offline_judge.
A judge's identity is model@revision + "#" + prompt hash (+ "+generate" when forced to
generate and parse; the offline judge: its encoder space + "#" + its parameter hash). Pairs
this judge already graded are cache hits; `error` rows are retried on the next run. Prompts
and answer parsing live in tasks.judgments.prompt, pair pools in tasks.judgments.pools.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import JudgeConfig
from schemas.tables import JUDGMENTS
from tasks.judgments.pools import (PAIRS, STAGE, Pool, document_texts, pool_from_catalog,  # noqa: F401
                                   pool_from_files, read_passages, read_topics, usable_queries)
from tasks.judgments.prompt import neutralise, parse_grade, render  # noqa: F401
from tasks.runtime.accounting import Quarantine, StageOutput  # noqa: F401
from tasks.runtime.ids import fingerprint

log = logging.getLogger(__name__)

PROMPT = "judge_graded"
LABELS = ["0", "1", "2", "3"]
CACHED_STATUSES = ("ok", "parse_error", "refused")  # `error` is retried


def load_template(cfg: JudgeConfig) -> tuple[str, str]:
    from tasks.prompts import load_prompt

    return load_prompt(PROMPT, cfg.prompt_version, cfg.prompts_dir)


def judge_name(cfg: JudgeConfig, prompt_sha: str | None = None) -> str:
    """model@revision#prompt-hash; the offline judge names its encoder space and parameters."""
    if cfg.backend == "offline":
        from tasks.backends.embedders import text_space

        o = cfg.offline
        return f"offline-cosine:{text_space(o.encoder)}#{fingerprint([o.thresholds, o.temperature])[:8]}"
    from tasks.backends.registry import backend_name

    sha = prompt_sha or load_template(cfg)[1]
    how = "+generate" if cfg.scoring == "generate" else ""  # a different method is a different judge
    return f"{backend_name(cfg, 'offline')}#{sha[:8]}{how}"


def judge_fingerprint(cfg: JudgeConfig) -> str:
    """What changes the judgments: model, revision, prompt, scoring, parameters (not batch size)."""
    keep = cfg.model_dump(mode="json", exclude={"enabled", "top_k", "batch_size", "actors", "cpus_per_actor",
                                                "threads_per_actor", "device", "local_below"})
    keep["openai"] = {"base_url": cfg.openai.base_url, "top_logprobs": cfg.openai.top_logprobs}
    if cfg.backend != "offline":
        keep["prompt_sha"] = load_template(cfg)[1]
    return fingerprint(keep)


# ---- scoring ----------------------------------------------------------------------------------
def judgment_rows(pairs: pa.Table, judge: str, p: list, statuses: list[str], raw: list) -> pa.Table:
    """Arrow judgments from per-pair p_grade (None unless scored), status and raw text."""
    grades, expected, plist = [], [], []
    for pi, st in zip(p, statuses):
        if pi is None or st != "ok":
            grades.append(None), expected.append(None), plist.append(None)
            continue
        pi = np.asarray(pi, np.float64)
        pi = pi / pi.sum()
        grades.append(int(np.argmax(pi)))
        expected.append(float(pi @ np.arange(4)))
        plist.append([float(x) for x in pi])
    return pa.table({
        "query_id": pairs["query_id"], "doc_id": pairs["doc_id"],
        "judge": pa.array([judge] * pairs.num_rows, pa.string()),
        "grade": pa.array(grades, pa.int8()), "p_grade": pa.array(plist, pa.list_(pa.float32(), 4)),
        "expected_grade": pa.array(expected, pa.float32()), "status": pa.array(statuses, pa.string()),
        "raw": pa.array(raw, pa.string()),
    }, schema=JUDGMENTS)


def _onehot(g: int) -> list[float]:
    return [1.0 if i == g else 0.0 for i in range(4)]


class Judge:
    """A judge built once (in a Ray actor or in-process) that scores batches of pairs."""

    def __init__(self, cfg: JudgeConfig, device: str = "auto", backend=None):
        self.cfg = cfg
        self.backend = backend
        if cfg.backend == "offline":
            from tasks.backends.embedders import local_text_embedder

            self.template, sha = None, None  # loaded once per process and encoder config
            self.backend = backend or local_text_embedder(cfg.offline.encoder.model_dump_json(),
                                                          "cpu" if device == "auto" else device)
        else:
            from tasks.backends.registry import build_label_scorer

            self.template, sha = load_template(cfg)
            self.backend = backend or build_label_scorer(cfg, device)
        self.name = judge_name(cfg, sha)

    def prompts(self, pairs: pa.Table) -> list:
        out = []
        for q, d, img in zip(pairs["query_text"].to_pylist(), pairs["doc_text"].to_pylist(),
                             pairs["image_path"].to_pylist()):
            text = render(self.template, q, d or "", self.cfg.max_doc_chars)
            if img and self.cfg.images == "pixels" and self.cfg.backend == "openai":
                from PIL import Image

                from tasks.backends.openai_compat import image_data_url

                with Image.open(img) as im:
                    url = image_data_url(im)
                text = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": text}]}]
            out.append(text)
        return out

    def __call__(self, pairs: pa.Table) -> pa.Table:
        if pairs.num_rows == 0:
            return JUDGMENTS.empty_table()
        if self.cfg.backend == "offline":
            return self._offline(pairs)
        prompts = self.prompts(pairs)
        # similar lengths share a batch (less padding); results come back in the input order
        order = np.argsort([len(p) if isinstance(p, str) else len(json.dumps(p)) for p in prompts], kind="stable")
        pairs, prompts = pairs.take(pa.array(order)), [prompts[i] for i in order]
        score = self._generate if self.cfg.scoring == "generate" else self._label_probs
        out = score(pairs, prompts)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return out.take(pa.array(inverse))

    def _offline(self, pairs: pa.Table) -> pa.Table:
        from tasks.judgments import offline_judge

        s = offline_judge.cosines(self.backend, pairs["query_text"].to_pylist(), pairs["doc_text"].to_pylist())
        p = offline_judge.grade_probabilities(s, self.cfg.offline.thresholds, self.cfg.offline.temperature)
        return judgment_rows(pairs, self.name, list(p), ["ok"] * pairs.num_rows,
                             [json.dumps({"cosine": round(float(x), 6)}) for x in s])

    def _label_probs(self, pairs: pa.Table, prompts: list) -> pa.Table:
        from tasks.backends.registry import outcomes

        if hasattr(self.backend, "label_outcomes"):  # openai: top logprobs, per item
            outs = self.backend.label_outcomes(prompts, LABELS)
        else:
            outs = outcomes(lambda ps: list(self.backend.label_probabilities(ps, LABELS)), prompts)
        p, status, raw = [None] * len(outs), ["error"] * len(outs), [None] * len(outs)
        fallback = []
        for i, o in enumerate(outs):
            if o.ok:
                p[i], status[i] = o.value, "ok"
                raw[i] = json.dumps({"p": [round(float(x), 6) for x in o.value]})
            elif o.no_logprobs:
                fallback.append(i)
            else:
                raw[i] = o.error
        if fallback:  # the server gives no logprobs: generate and parse those
            sub = self._generate(pairs.take(fallback), [prompts[i] for i in fallback])
            for j, i in enumerate(fallback):
                st = sub["status"][j].as_py()
                status[i], raw[i] = st, sub["raw"][j].as_py()
                p[i] = sub["p_grade"][j].as_py()
        return judgment_rows(pairs, self.name, p, status, raw)

    def _generate(self, pairs: pa.Table, prompts: list) -> pa.Table:
        from tasks.backends.registry import generate_outcomes

        outs = generate_outcomes(self.backend, prompts, self.cfg.max_new_tokens)
        p, status, raw = [], [], []
        for o in outs:
            if not o.ok:
                p.append(None), status.append("error"), raw.append(o.error)
                continue
            g, st = parse_grade(o.value)
            p.append(_onehot(g) if g is not None else None)
            status.append(st)
            raw.append(o.value)
        return judgment_rows(pairs, self.name, p, status, raw)


class JudgeActor:
    """Ray Data actor: builds the judge once, scores Arrow batches of pairs."""

    def __init__(self, cfg_json: str, device: str, threads: int | None):
        from tasks.backends.embedders import set_threads

        set_threads(threads)
        self.judge = Judge(JudgeConfig.model_validate_json(cfg_json), device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.judge(batch.cast(PAIRS))


# ---- the stage ---------------------------------------------------------------------------------
def already_judged(current: pa.Table | None, judge: str) -> pa.Table:
    """(query_id, doc_id) this judge already has a cacheable judgment for."""
    if current is None or current.num_rows == 0:
        return pa.table({"query_id": pa.array([], pa.string()), "doc_id": pa.array([], pa.string())})
    mine = current.filter(pc.and_(pc.equal(current["judge"], judge),
                                  pc.is_in(current["status"], pa.array(CACHED_STATUSES))))
    return mine.select(["query_id", "doc_id"])


def judge_pool(pool: Pool, cfg: JudgeConfig, current: pa.Table | None,
               compute: Callable[[pa.Table], pa.Table], judge: str) -> tuple[pa.Table, StageOutput]:
    """Judge the pool's pairs this judge has not graded yet; returns (new judgments, accounting).

    `compute` scores a table of pairs (in-process or on Ray) and returns judgments rows.
    """
    done = already_judged(current, judge)
    todo = pool.pairs.join(done, ["query_id", "doc_id"], join_type="left anti") if done.num_rows else pool.pairs
    hits = pool.pairs.num_rows - todo.num_rows
    new = compute(todo) if todo.num_rows else JUDGMENTS.empty_table()
    if new.num_rows != todo.num_rows:
        raise RuntimeError(f"judge returned {new.num_rows} judgments for {todo.num_rows} pairs")
    out = StageOutput(STAGE, {}, rows_in=pool.rows_in, rows_out=pool.pairs.num_rows, quarantine=pool.quarantine.table(),
                      rows_deduplicated=pool.duplicates, model_calls=todo.num_rows, cache_hits=hits)
    counts = {s: pc.sum(pc.equal(new["status"], s)).as_py() or 0 for s in ("ok", "parse_error", "refused", "error")}
    out.notes = {"judge": judge, "statuses": counts}
    return new, out


def ray_compute(cfg: JudgeConfig) -> Callable[[pa.Table], pa.Table]:
    """Score pairs on a Ray Data actor pool (each actor loads its model once). GPUs are asked
    for only when the cluster has them; device: cuda on a GPU-less cluster fails fast."""
    from tasks.backends.registry import run_actor_pool
    from tasks.runtime.ray_session import gpus_for, torch_device

    def compute(todo: pa.Table) -> pa.Table:
        num_gpus = 0.0 if cfg.backend == "openai" else gpus_for(cfg.device, STAGE)
        parts: list[pa.Table] = []
        lengths = pc.add(pc.utf8_length(pc.fill_null(todo["query_text"], "")),
                         pc.utf8_length(pc.fill_null(todo["doc_text"], "")))
        by_length = todo.take(pc.sort_indices(lengths))  # batches of similar length pad less
        run_actor_pool(by_length, JudgeActor, {"cfg_json": cfg.model_dump_json(), "device": torch_device(num_gpus),
                                          "threads": cfg.threads_per_actor},
                       batch_size=cfg.batch_size if cfg.backend != "offline" else max(cfg.batch_size, 256),
                       actors=cfg.actors, cpus_per_actor=cfg.cpus_per_actor, num_gpus=num_gpus,
                       on_batch=lambda b: parts.append(b.cast(JUDGMENTS)))
        if not parts:
            return JUDGMENTS.empty_table()
        t = pa.concat_tables(parts)
        # Ray returns batches in completion order; restore the pool's order for stable output
        at = {k: i for i, k in enumerate(zip(t["query_id"].to_pylist(), t["doc_id"].to_pylist()))}
        order = [at[k] for k in zip(todo["query_id"].to_pylist(), todo["doc_id"].to_pylist())]
        return t.take(pa.array(order, pa.int64())).cast(JUDGMENTS)

    return compute


def default_compute(cfg: JudgeConfig) -> Callable[[pa.Table], pa.Table]:
    """Ray actors for model work; an HTTP judge runs in-process so its key never reaches workers,
    and so does a job smaller than judge.local_below (no actor pool start-up for a few pairs)."""
    if cfg.backend == "openai":
        return in_process_compute(cfg)
    on_ray = ray_compute(cfg)

    def compute(todo: pa.Table) -> pa.Table:
        return in_process_compute(cfg)(todo) if todo.num_rows < cfg.local_below else on_ray(todo)

    return compute


def in_process_compute(cfg: JudgeConfig, backend=None) -> Callable[[pa.Table], pa.Table]:
    judge = Judge(cfg, cfg.device, backend)
    return lambda todo: pa.concat_tables([judge(todo.slice(i, cfg.batch_size))
                                          for i in range(0, todo.num_rows, cfg.batch_size)])


def run_judge_stage(store, pool: Pool, cfg: JudgeConfig, *, run_id: str | None,
                    compute: Callable[[pa.Table], pa.Table] | None = None, logger=None) -> dict:
    """Judge a pool and publish the merged judgments; returns a summary for the flow."""
    logger = logger or log
    started = time.perf_counter()
    name = judge_name(cfg)
    current = store.current("judgments")
    new, out = judge_pool(pool, cfg, current, compute or default_compute(cfg), name)
    res = store.publish_judgments(new, out, run_id=run_id, fingerprint_=judge_fingerprint(cfg), started=started,
                                  parents=pool.parents or [], merge_keys=["judge", "query_id", "doc_id"])
    summary = out.counts() | {"judge": name, "statuses": out.notes["statuses"], "dataset": res.dataset.ref,
                              "published": res.published}
    logger.info("judge %s: %d pairs, %d judged now, %d cached, statuses %s", name, out.rows_out,
                out.model_calls, out.cache_hits, out.notes["statuses"])
    return summary


# ---- the build flow's judge stage ---------------------------------------------------------------
from tasks.runtime.prefect_support import run_logger, stage_task  # noqa: E402


@stage_task("judge")
def judge_task(ctx, queries=None, embeddings=None) -> dict:
    """Judge the corpus's synthetic queries x their top-k candidates (when judge.enabled) and,
    with judge.answerability, record each query's grade on its own source document."""
    from tasks.judgments.analysis import sync_judgments_view
    from tasks.judgments.store import merge
    from tasks.runtime.context import stage_clock

    cfg = ctx.config.judge
    if not cfg.enabled:
        return {}
    logger = run_logger()
    started_at, t0 = stage_clock()
    pool = pool_from_catalog(ctx, cfg.top_k, with_sources=cfg.answerability)
    name = judge_name(cfg)
    current = ctx.read("judgments") if ctx.current("judgments") else None
    new, out = judge_pool(pool, cfg, current, default_compute(cfg), name)
    out.tables = {"judgments": merge(current, new, ["judge", "query_id", "doc_id"])}
    logger.info("judge %s: %d pairs, %d judged now, %d cached, statuses %s", name, out.rows_out,
                out.model_calls, out.cache_hits, out.notes["statuses"])
    results = ctx.record(out, parents=pool.parents, fingerprint=judge_fingerprint(cfg), started_at=started_at,
                         started=t0, logger=logger)
    sync_judgments_view(ctx.catalog, ctx.root)
    refs = {n: r.dataset for n, r in results.items()}
    if cfg.answerability:
        refs |= _record_answerability(ctx, cfg, name, refs["judgments"], logger)
    return refs


def source_grades(judgments: pa.Table, queries: pa.Table, judge: str) -> dict[str, int]:
    """Each query's grade on its own source document by `judge` (graded pairs only)."""
    mine = judgments.filter(pc.and_(pc.equal(judgments["judge"], judge), pc.is_valid(judgments["grade"])))
    grade = {(q, d): g for q, d, g in zip(mine["query_id"].to_pylist(), mine["doc_id"].to_pylist(),
                                          mine["grade"].to_pylist())}
    return {q: grade[(q, d)] for q, d in zip(queries["query_id"].to_pylist(), queries["doc_id"].to_pylist())
            if (q, d) in grade}


def _record_answerability(ctx, cfg: JudgeConfig, judge: str, judgments_ref, logger) -> dict:
    from tasks.queries import apply_answerability
    from tasks.runtime.context import stage_clock

    started_at, t0 = stage_clock()
    queries = ctx.read("queries")
    grades = source_grades(ctx.read("judgments"), queries, judge)
    updated = apply_answerability(queries, grades, cfg.answerable_min_grade)
    out = StageOutput("judge_answerability", {"queries": updated}, rows_in=queries.num_rows,
                      rows_out=updated.num_rows, notes={"graded": len(grades)})
    results = ctx.record(out, parents=[ctx.current("queries"), judgments_ref], fingerprint=judge_fingerprint(cfg),
                         started_at=started_at, started=t0, logger=logger)
    return {n: r.dataset for n, r in results.items()}
