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
generate and parse; the offline judge: its encoder space + "#" + its parameter hash). Pairs this judge already graded are cache hits; `error`
rows are retried on the next run.
"""
from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import JudgeConfig
from schemas.tables import JUDGMENTS
from tasks.runtime.accounting import Quarantine, StageOutput
from tasks.runtime.ids import fingerprint

log = logging.getLogger(__name__)

STAGE = "judge"
PROMPT = "judge_graded"
LABELS = ["0", "1", "2", "3"]
CACHED_STATUSES = ("ok", "parse_error", "refused")  # `error` is retried

PAIRS = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("query_text", pa.string()),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("doc_text", pa.string()),
    pa.field("image_path", pa.string()),  # absolute path of the document's image, if any
])


# ---- prompt --------------------------------------------------------------------------------------
_MARKER_RUN = re.compile(r"<{2,}|>{2,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def neutralise(text: str) -> str:
    """Make inserted text unable to open or close a <<<MARKER>>> of the prompt.

    Runs of two or more angle brackets become look-alike single guillemets, so no text can
    spell `<<<END PASSAGE>>>`; NFKC first folds full-width brackets into ASCII ones so they
    are caught too. Control characters other than newline and tab are dropped.
    """
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    return _MARKER_RUN.sub(lambda m: ("‹" if m.group()[0] == "<" else "›") * len(m.group()), text)


def render(template: str, query: str, document: str, max_doc_chars: int = 4000) -> str:
    """The judge prompt for one pair; a single pass, so inserted text is never re-substituted."""
    doc = neutralise(document)
    if len(doc) > max_doc_chars:
        doc = doc[:max_doc_chars] + " [...]"
    values = {"query": neutralise(query).strip(), "document": doc.strip()}
    return re.sub(r"\{(query|document)\}", lambda m: values[m.group(1)], template)


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


# ---- parsing a generated answer ------------------------------------------------------------------
_LABELLED = re.compile(r"(?:final\s+)?(?:score|grade|relevance|rating|label|answer)\s*(?:is|:|=|-)?\s*\**\s*([0-9]+)\b",
                       re.IGNORECASE)
_DIGIT = re.compile(r"(?<![\d.])(\d+)(?!\.?\d)")
_REFUSAL = re.compile(r"\b(I can(?:no|')t|I'm (?:not able|unable)|I am (?:not able|unable)|I won't|as an AI)\b",
                      re.IGNORECASE)


def parse_grade(text: str | None) -> tuple[int | None, str]:
    """(grade, status) from a generated answer: `ok`, `parse_error` or `refused`.

    Accepted: a labelled number ("Score: 2", "final grade = 3") or exactly one standalone
    number in the answer. The number must be 0..3; anything else is not guessed at.
    """
    if text is None or not text.strip():
        return None, "parse_error"
    labelled = _LABELLED.findall(text)
    if labelled:
        value = int(labelled[-1])
        return (value, "ok") if 0 <= value <= 3 else (None, "parse_error")
    numbers = set(_DIGIT.findall(text))
    if len(numbers) == 1:
        value = int(numbers.pop())
        return (value, "ok") if 0 <= value <= 3 else (None, "parse_error")
    if _REFUSAL.search(text):
        return None, "refused"
    return None, "parse_error"


# ---- pair pools ----------------------------------------------------------------------------------
@dataclass
class Pool:
    """Pairs ready to judge plus what could not become a pair (each with a reason)."""

    pairs: pa.Table
    quarantine: Quarantine
    rows_in: int
    duplicates: int = 0
    parents: list = None


def read_topics(path: str | Path) -> dict[str, str]:
    """`qid<TAB>text` lines (TREC topics as the LLMJudge files give them)."""
    topics = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            qid, _, text = line.partition("\t")
            topics[qid.strip()] = text.strip()
    return topics


def read_passages(path: str | Path) -> dict[str, str]:
    """JSONL with `docid`/`doc` (LLMJudge) or `doc_id`/`text`, or Parquet with doc_id, text."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["doc_id", "text"])
        return dict(zip(t["doc_id"].to_pylist(), t["text"].to_pylist()))
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out[str(r.get("docid", r.get("doc_id")))] = r.get("doc", r.get("text"))
    return out


def pool_from_files(pairs: str | Path, queries: str | Path, docs: str | Path) -> Pool:
    """Pairs named by a qrels file, a run file or a Parquet file (query_id, doc_id), with the
    query texts from a topics file and the document texts from a passages file."""
    from tasks.judgments import trec_io

    pairs, q = Path(pairs), Quarantine(STAGE)
    if pairs.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(pairs, columns=["query_id", "doc_id"])
        keys, rows_in, dups = t.group_by(["query_id", "doc_id"]).aggregate([]), t.num_rows, 0
        dups = rows_in - keys.num_rows
    else:
        first = next((ln for ln in pairs.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()), "")
        parsed = trec_io.read_run(pairs, STAGE) if len(first.split()) == 6 else _pairs_qrels(pairs)
        keys = parsed.table.select(["query_id", "doc_id"])
        if "tag" in parsed.table.column_names:
            unique = keys.group_by(["query_id", "doc_id"]).aggregate([])
            parsed.duplicates += keys.num_rows - unique.num_rows
            keys = unique
        rows_in, dups = parsed.lines, parsed.duplicates
        q.rows.extend(parsed.quarantine.rows)
    topics, passages = read_topics(queries), read_passages(docs)
    cols = {k: [] for k in ("query_id", "query_text", "doc_id", "doc_text", "image_path")}
    for qid, did in zip(keys["query_id"].to_pylist(), keys["doc_id"].to_pylist()):
        qt, dt = topics.get(qid), passages.get(did)
        if not qt:
            q.add(f"{qid}/{did}", f"query {qid} has no text in {Path(queries).name}")
        elif dt is None or not str(dt).strip():
            q.add(f"{qid}/{did}", f"document {did} has no text in {Path(docs).name}")
        else:
            for k, v in zip(cols, (qid, qt, did, dt, None)):
                cols[k].append(v)
    return Pool(pa.table(cols, schema=PAIRS), q, rows_in, dups, [])


def _pairs_qrels(path: Path):
    """Pairs of a qrels file: its labels are ignored here (the reference comes from import-qrels);
    a line with a missing or non-numeric label still names a pair."""
    from tasks.judgments import trec_io

    q, rows, lines, dups = Quarantine(STAGE), {}, 0, 0
    for n, line in trec_io._lines(path):
        lines += 1
        parts = None if line is None else line.split()
        if not parts or len(parts) < 3:
            q.add(f"{path.name}:{n}", "pairs line needs at least qid, iter and docid", (line or "").strip())
            continue
        if (parts[0], parts[2]) in rows:
            dups += 1
            continue
        rows[(parts[0], parts[2])] = True
    t = pa.table({"query_id": [k[0] for k in rows], "doc_id": [k[1] for k in rows]})
    return trec_io.Parsed(t, q, lines, dups)


def usable_queries(queries: pa.Table) -> pa.Table:
    """Queries that pass every filter except answerability (which the judge itself decides)."""
    ok = None
    for col in ("pass_length", "pass_copy", "pass_dedup", "pass_roundtrip"):
        c = pc.fill_null(queries[col], False)
        ok = c if ok is None else pc.and_(ok, c)
    return queries.filter(ok) if ok is not None else queries


def pool_from_catalog(ctx, top_k: int, with_sources: bool = False) -> Pool:
    """The usable synthetic queries x their top-k candidates (the `candidates` dataset, or a
    FAISS top-k over the text embeddings when no candidates were published); with_sources adds
    each query's own source document (for answerability)."""
    queries = usable_queries(ctx.read("queries"))
    documents = ctx.read("documents")
    captions = ctx.read("captions") if ctx.current("captions") else None
    cands, source = _candidates(ctx, queries, top_k)
    if with_sources:
        sources = queries.select(["query_id", "doc_id"])
        cands = pa.concat_tables([cands.select(["query_id", "doc_id"]).cast(sources.schema), sources])
        cands = cands.group_by(["query_id", "doc_id"]).aggregate([])
    parents = [v for v in (ctx.current("queries"), ctx.current("documents"), ctx.current("captions"), source)
               if v is not None]
    qtext = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist()))
    dtext = document_texts(documents, captions)
    root = ctx.config.corpus_root
    images = {d: str(root / u) for d, u in zip(documents["doc_id"].to_pylist(), documents["image_uri"].to_pylist()) if u}
    q = Quarantine(STAGE)
    cols = {k: [] for k in PAIRS.names}
    for qid, did in zip(cands["query_id"].to_pylist(), cands["doc_id"].to_pylist()):
        if not dtext.get(did):
            q.add(f"{qid}/{did}", f"document {did} has neither text nor a caption to judge")
            continue
        for k, v in zip(PAIRS.names, (qid, qtext[qid], did, dtext[did], images.get(did))):
            cols[k].append(v)
    return Pool(pa.table(cols, schema=PAIRS), q, cands.num_rows, 0, parents)


def document_texts(documents: pa.Table, captions: pa.Table | None) -> dict[str, str]:
    """What a text judge reads: the text, plus `[Image: caption]` for each image's captions
    (model captions first, then alt-text)."""
    caps: dict[str, list[str]] = {}
    if captions is not None and captions.num_rows:
        order = sorted(captions.to_pylist(), key=lambda r: (r["doc_id"], r["source"] != "model", r["text"]))
        for r in order:
            if r["text"] and r["text"].strip() and r["text"] not in caps.setdefault(r["doc_id"], []):
                caps[r["doc_id"]].append(r["text"].strip())
    out = {}
    for did, text in zip(documents["doc_id"].to_pylist(), documents["text"].to_pylist()):
        parts = [text.strip()] if text and text.strip() else []
        parts += [f"[Image: {c}]" for c in caps.get(did, [])]
        out[did] = "\n".join(parts)
    return out


def _candidates(ctx, queries: pa.Table, top_k: int):
    """(query_id, doc_id) pairs and the dataset version they came from."""
    if ctx.current("candidates") is not None:
        c = ctx.read("candidates")
        c = c.filter(pc.and_(pc.less_equal(c["rank"], top_k), pc.is_in(c["query_id"], queries["query_id"])))
        return c.group_by(["query_id", "doc_id"]).aggregate([]), ctx.current("candidates")
    return _faiss_topk(ctx, queries, top_k)


def _faiss_topk(ctx, queries: pa.Table, top_k: int):
    import faiss

    from tasks.backends.embedders import local_text_embedder

    emb_names = ctx.catalog.query("SELECT name FROM datasets WHERE is_current AND name LIKE 'embeddings/%text%' "
                                  "ORDER BY name").column("name").to_pylist()
    if not emb_names:
        raise RuntimeError("judging the build's queries needs document text embeddings (the embed stage) "
                           "or a published `candidates` dataset")
    emb = ctx.read(emb_names[0])
    emb = emb.filter(pc.is_in(emb["item_kind"], pa.array(["document", "caption"])))  # images via captions
    vecs = np.stack(emb["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    doc_ids = emb["doc_id"].to_pylist()
    qv = local_text_embedder(ctx.config.embed.text.model_dump_json()).embed(queries["text"].to_pylist())
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    _, idx = index.search(qv, min(2 * top_k, len(doc_ids)))  # a document may have several vectors
    qids = queries["query_id"].to_pylist()
    rows = set()
    for i, qid in enumerate(qids):
        seen: list[str] = []
        for j in idx[i]:
            if j >= 0 and doc_ids[j] not in seen and len(seen) < top_k:
                seen.append(doc_ids[j])
        rows |= {(qid, d) for d in seen}
    rows = sorted(rows)
    return (pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows]}, schema=pa.schema(
        [("query_id", pa.string()), ("doc_id", pa.string())])), ctx.current(emb_names[0]))


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
