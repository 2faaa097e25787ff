"""The queries stage: modality-targeted synthetic queries, with every filter outcome kept.

Each document gets queries per applicable target: `text` (answerable from its text), `image`
(from what its image shows, via its captions) and `text+image` (needs both). Generation is the
stage's work, cached per (document content for that target x target fingerprint); the filters
run in assemble, on query vectors embedded once through the embed stage's cache, with round-trip
against the text index. Whether the judge finds a query answerable is its own dataset
(`query_answerability`), joined on read by `usable_queries`.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import QUERIES
from tasks.corpus import captions_by_doc, document_text
from tasks.queries.filters import apply_filters
from tasks.queries.generate import OUTPUTS, PROMPT_NAMES, TARGETS, QueryWork, target_fingerprints, target_prompts
from tasks.runtime.ids import cache_key, canonical_json, record_id, text_sha256
from tasks.runtime.stage import KEY, UNIT, Assembled, Read, Resources, Stage, Units, Work, optional

FILTERS = ("length", "copy", "dedup", "roundtrip")
CANDIDATE = pa.schema([QUERIES.field(n) for n in ("query_id", "doc_id", "target_modality", "text", "generator",
                                                    "prompt_version", "source_text")])


class Queries(Stage):
    name = "queries"
    section = "queries"
    reads = (Read("documents"), optional("captions"), Read("indexes/text"))
    writes = ("queries",)
    description = "modality-targeted synthetic queries with filter outcomes"

    def prompt_shas(self) -> dict[str, str]:
        return {PROMPT_NAMES[t]: sha for t, (_, sha) in target_prompts(self.cfg).items() if sha}

    def work_fingerprint(self) -> str:
        return "per-target"  # unit keys carry their target's fingerprint, so the cache is shared

    def units(self, inputs) -> Units:
        """(document, target) pairs; an image target without any caption is rejected."""
        cfg = self.cfg
        fps = target_fingerprints(cfg)
        caps = {d: "\n".join(c) for d, c in captions_by_doc(inputs.get("captions")).items()}
        rows, rejected = [], []
        for d in inputs["documents"].select(["doc_id", "text", "image_uri"]).to_pylist():
            for t in cfg.targets:
                has_text, has_image = bool(d["text"]), bool(d["image_uri"])
                if (t == "text" and not has_text) or (t == "image" and not has_image) or \
                        (t == "text+image" and not (has_text and has_image)):
                    continue
                caption = caps.get(d["doc_id"]) if t != "text" else None
                if t != "text" and not caption:
                    rejected.append({"key": f"{d['doc_id']}/{t}", "reason": f"no caption for the {t} target: the image "
                                     "has no alt-text and no model caption (configure caption.backend)",
                                     "payload": {"image_uri": d["image_uri"]}})
                    continue
                text = d["text"] if t != "image" else None
                content = text_sha256(canonical_json([t, text, caption]))
                rows.append({UNIT: f"{d['doc_id']}/{t}", KEY: cache_key(content, fps[t]), "doc_id": d["doc_id"],
                             "target": t, "text": text, "caption": caption,
                             "source_text": document_text(text, caption.split("\n") if caption else None),
                             "content_sha256": content})
        schema = pa.schema([(UNIT, pa.string()), (KEY, pa.string()), ("doc_id", pa.string()), ("target", pa.string()),
                            ("text", pa.string()), ("caption", pa.string()), ("source_text", pa.string()),
                            ("content_sha256", pa.string())])
        return Units(pa.Table.from_pylist(rows, schema=schema), rejected)

    def work(self) -> Work:
        cfg = self.cfg
        prompts = {t: p for t, (p, _) in target_prompts(cfg).items()}
        return Work(QueryWork, {"cfg": cfg.model_dump(mode="json"), "prompts": prompts},
                    ["target", "text", "caption", "content_sha256"], OUTPUTS,
                    Resources.of(cfg, where="ray" if cfg.backend == "hf" else "local", uses_gpu=cfg.backend == "hf"))

    def payload(self, unit: dict) -> dict:
        return {"doc_id": unit["doc_id"], "target": unit["target"], "source_text": (unit["source_text"] or "")[:500]}

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        from tasks.embed import text_vectors

        cfg = self.cfg
        generated = {} if results is None else dict(zip(results[KEY].to_pylist(),
                                                        zip(results["texts"].to_pylist(),
                                                            results["generator"].to_pylist())))
        candidates, produced = [], []
        for u in units.to_pylist():
            texts, generator = generated[u[KEY]]
            produced.append(u[UNIT])
            for i, q in enumerate(texts):
                candidates.append({"query_id": record_id(u[KEY], i, q), "doc_id": u["doc_id"],
                                   "target_modality": u["target"], "text": q, "generator": generator,
                                   "prompt_version": cfg.prompt_versions.get(u["target"], "v1"),
                                   "source_text": u["source_text"]})
        cand = pa.Table.from_pylist(candidates, schema=CANDIDATE)
        if cand.num_rows == 0:
            return Assembled({"queries": QUERIES.empty_table()}, produced, notes={"queries": 0})
        qv = text_vectors(inputs, cand["text"].to_pylist())
        table = apply_filters(cand, qv, text_index(inputs), cfg.filters)
        return Assembled({"queries": table}, produced, notes={"queries": table.num_rows,
                                                             "fingerprints": target_fingerprints(cfg)})

    def report(self, outcome) -> None:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        from prefect.context import TaskRunContext

        from tasks.runtime.prefect_support import artifact_key, run_logger

        table = outcome.tables["queries"].table
        run_logger().info("queries: %d units, %d generated, %d from cache, %d quarantined, %d queries",
                          outcome.rows_in, outcome.model_calls, outcome.cache_hits, outcome.rows_quarantined,
                          table.num_rows)
        if TaskRunContext.get() is None:
            return
        s = summary(table)
        create_table_artifact(key=artifact_key(self.config.name, "queries-per-target"), table=[{"target": t} | c for t, c in s["per_target"].items()],
                              description="Synthetic queries per target modality (all candidates, and those passing)")
        create_table_artifact(key=artifact_key(self.config.name, "queries-filter-pass-rates"),
                              table=[{"filter": f} | r for f, r in s["filters"].items()],
                              description="Pass rate of each query filter")
        create_markdown_artifact(key=artifact_key(self.config.name, "queries-sample"), markdown=summary_markdown(s),
                                 description="Query counts, filter pass rates and 10 sampled queries")


def text_index(inputs):
    """The text index the round-trip filter (and the judge's pools) search."""
    from tasks.index.store import input_index

    return input_index(inputs, "indexes/text")


def usable_queries(queries: pa.Table, answerability: pa.Table | None = None, *, judged_filter: bool = True) -> pa.Table:
    """Queries that passed the queries stage's filters and, where the judge gave a verdict, were
    found answerable (the verdict lives in `query_answerability`, joined here)."""
    keep = pc.fill_null(queries["passed"], False)
    if judged_filter and answerability is not None and answerability.num_rows:
        bad = answerability.filter(pc.equal(pc.fill_null(answerability["pass_answerable"], True), False))
        keep = pc.and_(keep, pc.invert(pc.is_in(queries["query_id"], value_set=bad["query_id"])))
    return queries.filter(keep)


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
