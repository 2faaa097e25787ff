"""Query stage: modality-targeted synthetic queries, with every filter outcome kept as a column.

Each document gets queries per applicable target: `text` (answerable from its text), `image`
(from what its image shows, via its captions) and `text+image` (needs both). The generator is
the offline extractive baseline or an LLM (`hf` / `openai`) prompted with a versioned file per
target. Generation is cached per (document content for that target x target fingerprint), so a
second run generates nothing and bumping one target's prompt regenerates only that target.

Filters never drop a query; they set `pass_*` columns, `passed` and a readable `reject_reason`:
length bounds, n-gram copy overlap with the source, near-duplicates within a document and
target, round-trip retrieval of the source document in the top-k over the whole corpus, and an
answerability hook that the judge stage fills in (`apply_answerability`).
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import QueriesConfig, QueryFilters
from schemas.tables import QUERIES
from tasks.backends.offline import EXTRACTIVE, extractive_queries
from tasks.backends.registry import CacheSink, backend_name
from tasks.prompts import load_prompt
from tasks.runtime.accounting import Quarantine, StageOutput
from tasks.runtime.cache import KEY, WorkCache
from tasks.runtime.ids import cache_key, canonical_json, fingerprint, record_id, text_sha256

log = logging.getLogger(__name__)

STAGE = "queries"
DATASET = "queries"
TARGETS = ("text", "image", "text+image")
PROMPT_NAMES = {"text": "queries_text", "image": "queries_image", "text+image": "queries_text_image"}
FILTERS = ("length", "copy", "dedup", "roundtrip", "answerable")


# ---- prompts and fingerprints ----------------------------------------------------------------
def target_prompts(cfg: QueriesConfig) -> dict[str, tuple[str | None, str | None]]:
    """target -> (prompt text, sha); the offline generator reads no prompt, its version names the recipe."""
    out = {}
    for t in cfg.targets:
        version = cfg.prompt_versions.get(t, "v1")
        out[t] = (None, None) if cfg.backend == "offline" else load_prompt(PROMPT_NAMES[t], version, cfg.prompts_dir)
    return out


def target_fingerprints(cfg: QueriesConfig, prompts: dict | None = None) -> dict[str, str]:
    """One fingerprint per target: generator, that target's prompt (version + text) and parameters."""
    prompts = prompts or target_prompts(cfg)
    common = {"backend": cfg.backend, "model": cfg.model, "revision": cfg.revision, "dtype": cfg.dtype,
              "per_target": cfg.per_target, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
              "seed": cfg.seed if cfg.backend == "offline" else None}
    return {t: fingerprint(common | {"target": t, "prompt_version": cfg.prompt_versions.get(t, "v1"),
                                     "prompt_sha256": prompts[t][1]}) for t in cfg.targets}


def stage_fingerprint(cfg: QueriesConfig) -> str:
    return fingerprint({"targets": target_fingerprints(cfg), "filters": cfg.filters.model_dump()})


def render_prompt(template: str, text: str | None, caption: str | None, n: int) -> str:
    """Placeholders are substituted literally, so braces inside documents are harmless."""
    return template.replace("{text}", text or "").replace("{caption}", caption or "").replace("{n}", str(n))


_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.):]|q\d*[.:)]|query\s*\d*[.:)])\s*", re.I)


def parse_queries(output: str, n: int) -> list[str]:
    """One query per line; numbering, bullets and quotes removed; preambles ending in ':' skipped."""
    out: list[str] = []
    for line in (output or "").splitlines():
        q = _BULLET.sub("", line).strip().strip('"\u201c\u201d\'').strip()
        if not q or q.endswith(":") or q in out:
            continue
        out.append(q)
        if len(out) == n:
            break
    return out


# ---- units of work ---------------------------------------------------------------------------
def captions_by_doc(captions: pa.Table | None) -> dict[str, str]:
    """Each document's caption texts, model captions first, one per line."""
    if captions is None or captions.num_rows == 0:
        return {}
    rows = sorted(captions.select(["doc_id", "text", "source", "caption_id"]).to_pylist(),
                  key=lambda r: (r["doc_id"], r["source"] != "model", r["caption_id"]))
    out: dict[str, list[str]] = {}
    for r in rows:
        texts = out.setdefault(r["doc_id"], [])
        if r["text"] not in texts:
            texts.append(r["text"])
    return {d: "\n".join(t) for d, t in out.items()}


def query_units(documents: pa.Table, captions: pa.Table | None, cfg: QueriesConfig,
                fps: dict[str, str], quarantine: Quarantine) -> pa.Table:
    """(document, target) pairs to generate for; an image target without any caption is quarantined."""
    caps = captions_by_doc(captions)
    rows = []
    for d in documents.select(["doc_id", "modality", "text", "image_uri"]).to_pylist():
        for t in cfg.targets:
            has_text, has_image = bool(d["text"]), bool(d["image_uri"])
            if (t == "text" and not has_text) or (t == "image" and not has_image) or \
                    (t == "text+image" and not (has_text and has_image)):
                continue
            caption = caps.get(d["doc_id"]) if t != "text" else None
            if t != "text" and not caption:
                quarantine.add(f"{d['doc_id']}/{t}", f"no caption for the {t} target: the image has no alt-text "
                               "and no model caption (configure caption.backend)", {"image_uri": d["image_uri"]})
                continue
            text = d["text"] if t != "image" else None
            source = "\n".join(x for x in (text, caption) if x)
            content = text_sha256(canonical_json([t, text, caption]))
            rows.append({KEY: cache_key(content, fps[t]), "doc_id": d["doc_id"], "target": t, "text": text,
                         "caption": caption, "source_text": source, "content_sha256": content})
    schema = pa.schema([(KEY, pa.string()), ("doc_id", pa.string()), ("target", pa.string()), ("text", pa.string()),
                        ("caption", pa.string()), ("source_text", pa.string()), ("content_sha256", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


# ---- generation --------------------------------------------------------------------------------
RESULT = pa.schema([(KEY, pa.string()), ("texts", pa.list_(pa.string())), ("generator", pa.string()),
                    ("error", pa.string())])


def generate_offline(units: pa.Table, cfg: QueriesConfig) -> pa.Table:
    """The extractive baseline, seeded per unit content so the same input gives the same queries."""
    keys, texts, errors = [], [], []
    for u in units.to_pylist():
        seed = int(u["content_sha256"][:12], 16) ^ cfg.seed
        qs = extractive_queries(u["target"], u["text"], u["caption"], cfg.per_target, seed)
        keys.append(u[KEY])
        texts.append(qs)
        errors.append(None if qs else "no queries: too few content words to crop from")
    return pa.table({KEY: keys, "texts": texts, "generator": [EXTRACTIVE] * len(keys), "error": errors},
                    schema=RESULT)


def generate_batch(backend, units: pa.Table, prompts: dict[str, str], n: int, max_new_tokens: int) -> pa.Table:
    """LLM generation for one batch; a failed call or an answer with no parsable query is an error row."""
    from tasks.backends.registry import generate_outcomes

    rows = units.to_pylist()
    rendered = [render_prompt(prompts[u["target"]], u["text"], u["caption"], n) for u in rows]
    texts, errors = [], []
    for o in generate_outcomes(backend, rendered, max_new_tokens):
        qs = parse_queries(o.value, n) if o.ok else []
        texts.append(qs)
        errors.append(f"generation failed: {o.error}" if not o.ok else
                      None if qs else f"no query could be parsed from the model output: {(o.value or '')[:200]!r}")
    return pa.table({KEY: [u[KEY] for u in rows], "texts": texts, "generator": [backend.name] * len(rows),
                     "error": errors}, schema=RESULT)


class QueryActor:
    """A Ray Data actor: builds the generator once, generates queries for batches of units."""

    def __init__(self, cfg_json: str, device: str, prompts: dict[str, str], threads: int | None):
        from tasks.backends.embedders import set_threads
        from tasks.backends.registry import build_generator

        set_threads(threads)
        self.cfg = QueriesConfig.model_validate_json(cfg_json)
        self.prompts = prompts
        self.backend = build_generator(self.cfg, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return generate_batch(self.backend, batch, self.prompts, self.cfg.per_target, self.cfg.max_new_tokens)


Compute = Callable[[pa.Table, Callable[[pa.Table], None]], int]


def offline_compute(cfg: QueriesConfig) -> Compute:
    def compute(todo: pa.Table, on_batch: Callable[[pa.Table], None]) -> int:
        on_batch(generate_offline(todo, cfg))
        return todo.num_rows

    return compute


def local_compute(cfg: QueriesConfig) -> Compute:
    """In the calling process: the `openai` backend holds no model, so it runs here on its own bounded
    thread pool, and its API key never travels to Ray workers."""
    from tasks.backends.registry import build_generator

    prompts = {t: p for t, (p, _) in target_prompts(cfg).items()}

    def compute(todo: pa.Table, on_batch: Callable[[pa.Table], None]) -> int:
        backend = build_generator(cfg, "cpu")
        try:
            for i in range(0, todo.num_rows, cfg.batch_size):
                on_batch(generate_batch(backend, todo.slice(i, cfg.batch_size), prompts, cfg.per_target,
                                        cfg.max_new_tokens))
        finally:
            getattr(backend, "close", lambda: None)()
        return todo.num_rows

    return compute


def compute_for(cfg: QueriesConfig, num_gpus: float) -> Compute:
    """`hf` runs on Ray actors, `openai` in-process, `offline` in-process (no model)."""
    if cfg.backend == "offline":
        return offline_compute(cfg)
    if cfg.backend == "openai":
        return local_compute(cfg)
    return ray_compute(cfg, num_gpus)


def ray_compute(cfg: QueriesConfig, num_gpus: float) -> Compute:
    from tasks.backends.registry import run_actor_pool
    from tasks.runtime.ray_session import torch_device

    prompts = {t: p for t, (p, _) in target_prompts(cfg).items()}

    def compute(todo: pa.Table, on_batch: Callable[[pa.Table], None]) -> int:
        return run_actor_pool(
            todo.select([KEY, "target", "text", "caption"]), QueryActor,
            {"cfg_json": cfg.model_dump_json(), "device": torch_device(num_gpus) if cfg.backend == "hf" else "cpu",
             "prompts": prompts, "threads": cfg.threads_per_actor},
            batch_size=cfg.batch_size, actors=cfg.actors, cpus_per_actor=cfg.cpus_per_actor, num_gpus=num_gpus,
            on_batch=on_batch)

    return compute


# ---- filters (model-free) ----------------------------------------------------------------------
_TOKEN = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _TOKEN.findall((text or "").lower())


def copy_overlap(query: str, source: str, n: int = 3) -> float:
    """Share of the query's word n-grams that occur in the source (queries shorter than n use their length)."""
    q, s = words(query), words(source)
    n = max(1, min(n, len(q)))
    grams = [tuple(q[i:i + n]) for i in range(len(q) - n + 1)]
    if not grams:
        return 0.0
    src = {tuple(s[i:i + n]) for i in range(len(s) - n + 1)}
    return sum(g in src for g in grams) / len(grams)


def near_duplicate_pass(groups: Sequence[str], vectors: np.ndarray, threshold: float) -> list[bool]:
    """False for a query whose cosine to an earlier kept query of the same group exceeds the threshold."""
    keep = [True] * len(groups)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for idx in by_group.values():
        kept: list[int] = []
        for i in idx:
            if kept and float(np.max(vectors[kept] @ vectors[i])) > threshold:
                keep[i] = False
            else:
                kept.append(i)
    return keep


def roundtrip_ranks(query_vectors: np.ndarray, source_doc_ids: Sequence[str], corpus_vectors: np.ndarray,
                    corpus_doc_ids: Sequence[str], k: int, batch: int = 1024) -> list[int | None]:
    """1-based rank of each query's source document among documents (best item per document), or None
    when it is not in the top k. FAISS inner product over normalised vectors, in bounded batches."""
    import faiss

    if len(source_doc_ids) == 0:
        return []
    corpus_vectors = np.ascontiguousarray(corpus_vectors, np.float32)
    index = faiss.IndexFlatIP(corpus_vectors.shape[1])
    index.add(corpus_vectors)
    items_per_doc = max(np.unique(np.asarray(corpus_doc_ids), return_counts=True)[1]) if len(corpus_doc_ids) else 1
    depth = min(index.ntotal, k * int(items_per_doc))
    ranks: list[int | None] = []
    for start in range(0, len(source_doc_ids), batch):
        q = np.ascontiguousarray(query_vectors[start:start + batch], np.float32)
        _, hits = index.search(q, depth)
        for row, src in zip(hits, source_doc_ids[start:start + batch]):
            docs: list[str] = []
            for h in row:
                if h >= 0 and corpus_doc_ids[h] not in docs:
                    docs.append(corpus_doc_ids[h])
                if len(docs) == k:
                    break
            ranks.append(docs.index(src) + 1 if src in docs else None)
    return ranks


def apply_filters(candidates: pa.Table, query_vectors: np.ndarray, corpus_vectors: np.ndarray,
                  corpus_doc_ids: Sequence[str], f: QueryFilters, answerable: dict[str, bool] | None = None) -> pa.Table:
    """The `queries` table: candidates with every filter outcome, `passed` and the reasons it failed."""
    rows = candidates.to_pylist()
    qv = _normalise(query_vectors)
    dedup = near_duplicate_pass([f"{r['doc_id']}\x00{r['target_modality']}" for r in rows], qv, f.dedup_cosine)
    ranks = roundtrip_ranks(qv, [r["doc_id"] for r in rows], _normalise(corpus_vectors), list(corpus_doc_ids),
                            f.roundtrip_k)
    answerable = answerable or {}
    out = []
    for r, d, rank in zip(rows, dedup, ranks):
        n_words = len(words(r["text"]))
        overlap = copy_overlap(r["text"], r["source_text"] or "", f.copy_ngram)
        ans = answerable.get(r["query_id"])
        checks = {
            "length": (f.min_words <= n_words <= f.max_words,
                       f"length: {n_words} words outside [{f.min_words}, {f.max_words}]"),
            "copy": (overlap <= f.max_copy_overlap,
                     f"copy: {overlap:.2f} of its {f.copy_ngram}-grams are in the source > {f.max_copy_overlap}"),
            "dedup": (d, f"dedup: cosine > {f.dedup_cosine} with an earlier query of this document and target"),
            "roundtrip": (rank is not None, f"roundtrip: source document not in the top {f.roundtrip_k}"),
            "answerable": (ans, "answerable: the judge graded the source below 2 for this query"),
        }
        reasons = [why for ok, why in checks.values() if ok is False]
        out.append(r | {"pass_length": checks["length"][0], "pass_copy": checks["copy"][0],
                        "pass_dedup": d, "pass_roundtrip": rank is not None, "pass_answerable": ans,
                        "copy_overlap": overlap, "roundtrip_rank": rank,
                        "passed": not reasons, "reject_reason": "; ".join(reasons) or None})
    return pa.Table.from_pylist(out, schema=QUERIES)


def apply_answerability(queries: pa.Table, grades: dict[str, int], min_grade: int = 2) -> pa.Table:
    """The judge's hook: set `pass_answerable` from each query's grade on its source document and
    recompute `passed`/`reject_reason`. Queries without a grade keep NULL (not judged)."""
    rows = []
    for r in queries.to_pylist():
        if r["query_id"] in grades:
            ok = grades[r["query_id"]] >= min_grade
            reasons = [x for x in (r["reject_reason"] or "").split("; ") if x and not x.startswith("answerable:")]
            if not ok:
                reasons.append(f"answerable: the judge graded the source {grades[r['query_id']]} < {min_grade}")
            r = r | {"pass_answerable": ok, "passed": not reasons, "reject_reason": "; ".join(reasons) or None}
        rows.append(r)
    return pa.Table.from_pylist(rows, schema=QUERIES)


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if v.size == 0:
        return v
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


# ---- the stage -------------------------------------------------------------------------------
Embed = Callable[[list[str]], np.ndarray]


def synthesize_queries(documents: pa.Table, captions: pa.Table | None, cfg: QueriesConfig, cache: WorkCache,
                       compute: Compute, embed: Embed, corpus: tuple[np.ndarray, list[str]] | None = None,
                       previous: pa.Table | None = None) -> StageOutput:
    """Generate what the cache lacks, assemble every candidate, and record filter outcomes.

    One row in per (document, target) unit: out when it yields queries, quarantined (with the
    reason) when its generation failed or it has no caption to work from. `corpus` is the
    document-side embeddings (vectors, doc ids) for round-trip; it is embedded here when absent.
    """
    quarantine = Quarantine(STAGE)
    prompts = target_prompts(cfg)
    fps = target_fingerprints(cfg, prompts)
    units = query_units(documents, captions, cfg, fps, quarantine)
    rows_in = units.num_rows + len(quarantine)
    unique = sorted(set(units[KEY].to_pylist()))
    _, missing = cache.lookup(unique)
    todo = _first_per_key(units.filter(pc.is_in(units[KEY], value_set=pa.array(sorted(missing), pa.string()))))
    sink = CacheSink(cache, ["texts", "generator"])
    try:
        model_calls = compute(todo, sink) if todo.num_rows else 0
    finally:
        sink.flush()  # what finished survives a crash: the next run resumes from it
    failed = sink.failed
    cached, still_missing = cache.lookup(unique)
    lost = still_missing - set(failed)
    if lost:
        raise RuntimeError(f"{STAGE}: {len(lost)} units went to the generator and came back with neither "
                           "queries nor an error; the actor pool lost work")
    generated = {} if cached is None else dict(zip(cached[KEY].to_pylist(),
                                                   zip(cached["texts"].to_pylist(), cached["generator"].to_pylist())))
    candidates, produced = [], 0
    for u in units.to_pylist():
        t = u["target"]
        if u[KEY] not in generated:
            quarantine.add(f"{u['doc_id']}/{t}", failed.get(u[KEY], "generation failed"),
                           {"doc_id": u["doc_id"], "target": t, "source_text": u["source_text"][:500]})
            continue
        produced += 1
        texts, generator = generated[u[KEY]]
        for i, q in enumerate(texts):
            candidates.append({"query_id": record_id(u[KEY], i, q), "doc_id": u["doc_id"], "target_modality": t,
                               "text": q, "generator": generator, "prompt_version": cfg.prompt_versions.get(t, "v1"),
                               "source_text": u["source_text"]})
    cand = pa.Table.from_pylist(candidates, schema=pa.schema([QUERIES.field(n) for n in (
        "query_id", "doc_id", "target_modality", "text", "generator", "prompt_version", "source_text")]))
    qv = embed(cand["text"].to_pylist()) if cand.num_rows else np.zeros((0, 1), np.float32)
    if corpus is None:
        corpus = corpus_from_documents(documents, captions, embed)
    answerable = {}
    if previous is not None and previous.num_rows:
        answerable = {q: a for q, a in zip(previous["query_id"].to_pylist(), previous["pass_answerable"].to_pylist())
                      if a is not None}
    table = apply_filters(cand, qv, corpus[0], corpus[1], cfg.filters, answerable) if cand.num_rows \
        else QUERIES.empty_table()
    return StageOutput(STAGE, {DATASET: table}, rows_in=rows_in, rows_out=produced,
                       quarantine=quarantine.table(), model_calls=model_calls,
                       cache_hits=len(unique) - len(missing),
                       notes={"fingerprints": fps, "queries": table.num_rows}).check()


def corpus_from_documents(documents: pa.Table, captions: pa.Table | None, embed: Embed) -> tuple[np.ndarray, list[str]]:
    """Document-side vectors for round-trip when no embeddings dataset is at hand: texts and captions."""
    items = [(d, t) for d, t in zip(documents["doc_id"].to_pylist(), documents["text"].to_pylist()) if t]
    if captions is not None:
        items += list(zip(captions["doc_id"].to_pylist(), captions["text"].to_pylist()))
    return embed([t for _, t in items]), [d for d, _ in items]


def corpus_from_embeddings(embeddings: pa.Table, doc_ids: set[str]) -> tuple[np.ndarray, list[str]]:
    """Document and caption vectors of current documents from a published text-embeddings dataset."""
    keep = embeddings.filter(pc.is_in(embeddings["item_kind"], value_set=pa.array(["document", "caption"])))
    keep = keep.filter(pc.is_in(keep["doc_id"], value_set=pa.array(sorted(doc_ids), pa.string())))
    vecs = np.asarray(keep["vector"].to_pylist(), np.float32) if keep.num_rows else np.zeros((0, 1), np.float32)
    return vecs, keep["doc_id"].to_pylist()


def _first_per_key(table: pa.Table) -> pa.Table:
    seen, idx = set(), []
    for i, k in enumerate(table[KEY].to_pylist()):
        if k not in seen:
            seen.add(k)
            idx.append(i)
    return table.take(pa.array(idx, pa.int64()))


def summary(table: pa.Table, sample: int = 10) -> dict:
    """Counts per target, pass rate per filter and a deterministic sample, for the artifacts."""
    rows = table.to_pylist()
    per_target = {t: {"queries": 0, "passed": 0} for t in TARGETS}
    for r in rows:
        per_target[r["target_modality"]]["queries"] += 1
        per_target[r["target_modality"]]["passed"] += bool(r["passed"])
    rates = {}
    for f in FILTERS:
        vals = [r[f"pass_{f}"] for r in rows if r[f"pass_{f}"] is not None]
        rates[f] = {"evaluated": len(vals), "pass_rate": round(sum(vals) / len(vals), 4) if vals else None}
    picked = sorted(rows, key=lambda r: r["query_id"])[:sample]
    return {"per_target": per_target, "filters": rates, "sample": picked}


def summary_markdown(s: dict) -> str:
    def cell(x) -> str:
        return str(x).replace("|", "/").replace("\n", " / ")[:160]

    lines = ["### Queries per target modality", "", "| target | queries | passed |", "|---|---|---|"]
    lines += [f"| {t} | {c['queries']} | {c['passed']} |" for t, c in s["per_target"].items()]
    lines += ["", "### Pass rate per filter", "", "| filter | evaluated | pass rate |", "|---|---|---|"]
    lines += [f"| {f} | {r['evaluated']} | {r['pass_rate'] if r['pass_rate'] is not None else 'n/a'} |"
              for f, r in s["filters"].items()]
    lines += ["", "### Sampled queries", "", "| target | query | passed | source text or caption |", "|---|---|---|---|"]
    lines += [f"| {r['target_modality']} | {cell(r['text'])} | {'yes' if r['passed'] else cell(r['reject_reason'])} | "
              f"{cell(r['source_text'])} |" for r in s["sample"]]
    return "\n".join(lines)


# ---- Prefect task ----------------------------------------------------------------------------
from tasks.runtime.context import RunContext, stage_clock  # noqa: E402
from tasks.runtime.prefect_support import run_logger, stage_task  # noqa: E402


@stage_task("queries")
def queries_task(ctx: RunContext, documents, captions=None, embeddings=None) -> dict:
    """Generate modality-targeted queries for `documents`, filter them and publish `queries`."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.backends.embedders import local_text_embedder, text_space
    from tasks.runtime.ray_session import gpus_for

    started_at, t0 = stage_clock()
    cfg = ctx.config.queries
    if not cfg.enabled:
        return {}
    docs = ctx.read(documents.name, documents.version)
    caps = ctx.read(captions.name, captions.version) if captions else None
    embedder = local_text_embedder(ctx.config.embed.text.model_dump_json())
    corpus = None
    if embeddings is not None:
        emb = ctx.read(embeddings.name, embeddings.version)
        if emb.num_rows and emb["space"][0].as_py() == text_space(ctx.config.embed.text):
            corpus = corpus_from_embeddings(emb, set(docs["doc_id"].to_pylist()))
    num_gpus = gpus_for(cfg.device, STAGE) if cfg.backend == "hf" else 0.0
    compute = compute_for(cfg, num_gpus)
    cache = WorkCache(ctx.root, STAGE, "units")  # unit keys carry their target fingerprint
    previous = ctx.read(DATASET) if ctx.current(DATASET) else None
    out = synthesize_queries(docs, caps, cfg, cache, compute, embedder.embed, corpus, previous)
    logger = run_logger()
    logger.info("queries (%s): %d units, %d generated, %d from cache, %d quarantined, %d queries",
                backend_name(cfg, EXTRACTIVE), out.rows_in, out.model_calls, out.cache_hits,
                out.rows_quarantined, out.notes["queries"])
    parents = [documents] + [p for p in (captions, embeddings) if p is not None]
    results = ctx.record(out, parents=parents, fingerprint=stage_fingerprint(cfg), started_at=started_at,
                         started=t0, logger=logger)
    s = summary(out.tables[DATASET])
    create_table_artifact(key="queries-per-target", table=[{"target": t} | c for t, c in s["per_target"].items()],
                          description="Synthetic queries per target modality (all candidates, and those passing)")
    create_table_artifact(key="queries-filter-pass-rates", table=[{"filter": f} | r for f, r in s["filters"].items()],
                          description="Pass rate of each query filter")
    create_markdown_artifact(key="queries-sample", markdown=summary_markdown(s),
                             description="Query counts, filter pass rates and 10 sampled queries")
    return {name: r.dataset for name, r in results.items()}
