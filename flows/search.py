"""The `search` flow: LATTICE tree search over a query set, written into the catalog as a run.

The ranking of each query becomes rows of `candidates/tree-NAME` (query_id, doc_id, rank, score,
retriever), with lineage to the tree it searched, so the judgment and negatives stages can use it
like any other retriever's run; a TREC run file (`qid Q0 docid rank score tag`) can be written too.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from prefect import flow, get_run_logger

from schemas.config import BuildConfig, TreeConfig, load_config
from schemas.tables import CANDIDATES
from tasks.runtime.accounting import Quarantine, StageOutput
from tasks.runtime.catalog import Catalog, now
from tasks.runtime.ids import canonical_json, fingerprint
from tasks.runtime.publish import publish, read
from tasks.runtime.storage import DataRoot
from tasks.tree.scorers import EmbeddingScorer, LLMListwiseScorer
from tasks.tree.search import SearchParams, SearchResult, search
from tasks.tree.stage import embedder_for, load_tree

log = logging.getLogger(__name__)

STAGE = "search"


def candidates_dataset(tree: str) -> str:
    return f"candidates/tree-{tree}"


# ---- inputs ----------------------------------------------------------------------------------
def read_queries(path: str | Path) -> list[tuple[str, str]]:
    """Queries from a TSV (`qid<TAB>text`, the TREC/LLMJudge topics format) or JSONL
    (`{"query_id"|"qid", "text"|"query"}`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"query file {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            out.append((str(row.get("query_id", row.get("qid"))), str(row.get("text", row.get("query", "")))))
        else:
            if "\t" not in line:
                raise ValueError(f"{path}:{n}: expected `qid<TAB>text`, got {line[:80]!r}")
            qid, text = line.split("\t", 1)
            out.append((qid.strip(), text.strip()))
    return out


def catalog_queries(catalog: Catalog, root: DataRoot) -> list[tuple[str, str]]:
    """The passing synthetic queries of the current `queries` dataset."""
    if catalog.current("queries") is None:
        raise KeyError("the catalog has no `queries` dataset; pass --queries FILE")
    t = read(catalog, root, "queries")
    return [(r["query_id"], r["text"]) for r in t.to_pylist() if r["passed"]]


# ---- the model-free part ---------------------------------------------------------------------
@dataclass
class SearchRun:
    candidates: pa.Table
    results: list[SearchResult]
    quarantine: Quarantine


def run_queries(tree, queries: list[tuple[str, str]], scorer, params: SearchParams, k: int, retriever: str) -> SearchRun:
    q = Quarantine(STAGE)
    rows, results, seen = [], [], set()
    for qid, text in queries:
        if qid in seen:
            q.add(qid, "duplicate query id: only the first query with this id is searched", {"text": text})
            continue
        seen.add(qid)
        if not text or not text.strip():
            q.add(qid, "empty query text", {"text": text})
            continue
        result = search(tree, text, scorer, params, k=k)
        results.append(result)
        rows += [{"query_id": qid, "doc_id": h.doc_id, "rank": h.rank, "score": h.score, "retriever": retriever}
                 for h in result.hits]
    return SearchRun(pa.Table.from_pylist(rows, schema=CANDIDATES), results, q)


def write_trec_run(candidates: pa.Table, path: str | Path, tag: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in candidates.sort_by([("query_id", "ascending"), ("rank", "ascending")]).to_pylist():
            f.write(f"{r['query_id']} Q0 {r['doc_id']} {r['rank']} {r['score']:.6f} {tag}\n")


def make_scorer(cfg: TreeConfig, space: str, encoders: list, kind: str | None = None):
    kind = kind or cfg.search.scorer
    if kind == "llm":
        from tasks.backends.registry import build_generator

        if cfg.search.llm.backend == "offline":
            raise ValueError("the llm scorer needs tree.search.llm with backend hf or openai in --config")
        return LLMListwiseScorer(build_generator(cfg.search.llm), max_new_tokens=cfg.search.llm.max_new_tokens)
    return EmbeddingScorer(embedder_for(space, encoders).embed)


def open_store(catalog: str | None, config: BuildConfig | None) -> tuple[Catalog, DataRoot]:
    """The catalog and data root of --config, else a catalog file with `data/` beside it."""
    if config is not None and catalog is None:
        return Catalog(config.catalog_path), DataRoot(config.data_root_uri)
    if catalog is None:
        raise ValueError("pass a catalog path or a config")
    if not Path(catalog).exists():
        raise FileNotFoundError(f"no catalog at {catalog}: build a corpus first")
    return Catalog(catalog), DataRoot(config.data_root_uri if config else str(Path(catalog).parent / "data"))


# ---- the flow --------------------------------------------------------------------------------
@flow(name="search", log_prints=False)
def search_flow(catalog: str | None = None, config_path: str | None = None, tree: str | None = None,
                queries_file: str | None = None, k: int | None = None, scorer: str | None = None,
                qids: list[str] | None = None, trec_out: str | None = None) -> dict:
    """Search tree NAME for every query (a file, else the catalog's passing queries); publish the run."""
    logger = get_run_logger()
    config = load_config(config_path) if config_path else None
    tcfg = config.tree if config else TreeConfig()
    name = tree or tcfg.name
    k = k or tcfg.search.k
    cat, root = open_store(catalog, config)
    loaded = load_tree(cat, root, name)
    queries = read_queries(queries_file) if queries_file else catalog_queries(cat, root)
    if qids:
        wanted = set(qids)
        queries = [q for q in queries if q[0] in wanted]
    s = tcfg.search
    params = SearchParams(s.beam, s.iterations, s.calibration_leaves, s.path_factor, tcfg.seed)
    slate_scorer = make_scorer(tcfg, loaded.tree.space, [config.embed.text] if config else [], scorer)
    retriever = f"tree:{name}:{slate_scorer.name}"
    fp = fingerprint({"tree": loaded.nodes.content_hash, "params": params.__dict__, "k": k, "scorer": slate_scorer.name})
    with cat.run_lock(config.flow.lock_timeout_s if config else 600.0, holder=f"search of tree '{name}'"):
        run_id = cat.start_run("search", config.name if config else name, fp,
                               canonical_json({"tree": name, "k": k, "params": params.__dict__,
                                               "scorer": slate_scorer.name, "queries": queries_file}))
        started_at, t0 = now(), time.perf_counter()
        try:
            run = run_queries(loaded.tree, queries, slate_scorer, params, k, retriever)
            calls = sum(r.scorer_calls for r in run.results)
            out = StageOutput(STAGE, {candidates_dataset(name): run.candidates}, rows_in=len(queries),
                              rows_out=len(run.results), quarantine=run.quarantine.table(), model_calls=calls).check()
            cat.add_quarantine(run_id, out.quarantine)
            result = publish(cat, root, candidates_dataset(name), run.candidates, parents=[loaded.nodes],
                             run_id=run_id, stage=STAGE, fingerprint=fp)
            cat.record_stage(run_id, STAGE, fingerprint=fp, started_at=started_at, status="completed",
                             rows_in=out.rows_in, rows_out=out.rows_out, rows_quarantined=out.rows_quarantined,
                             rows_deduplicated=0, model_calls=calls, cache_hits=0,
                             seconds=time.perf_counter() - t0)
        except BaseException as e:
            cat.finish_run(run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
            raise
        cat.finish_run(run_id, "completed")
    if trec_out:
        write_trec_run(run.candidates, trec_out, retriever)
    summary = {
        "run_id": run_id, "tree": loaded.nodes.ref, "dataset": result.dataset.ref, "published": result.published,
        "queries": len(run.results), "quarantined": out.rows_quarantined, "rows": run.candidates.num_rows,
        "scorer": slate_scorer.name, "scorer_calls": calls,
        "calls_per_query": calls / max(len(run.results), 1),
        "failed_slates": sum(r.failed_slates for r in run.results), "trec_out": trec_out,
    }
    logger.info("search over tree %s: %d queries, %.1f scorer calls per query, %d failed slates, run %s",
                name, summary["queries"], summary["calls_per_query"], summary["failed_slates"], summary["dataset"])
    _artifact(summary, run)
    return summary


def _artifact(summary: dict, run: SearchRun) -> None:
    from prefect.artifacts import create_markdown_artifact

    lines = [f"## Tree search {summary['dataset']}", "",
             f"{summary['queries']} queries, {summary['calls_per_query']:.1f} scorer calls per query "
             f"({summary['scorer']}), {summary['failed_slates']} failed slates", "",
             "| query | calls | failed | top hit | its path |", "|---|---|---|---|---|"]
    for r in run.results[:20]:
        top = r.hits[0] if r.hits else None
        path = " › ".join(s[:40] for _, s in top.path) if top else ""
        lines.append(f"| {r.query[:60]} | {r.scorer_calls} | {r.failed_slates} | {top.doc_id if top else '-'} "
                     f"| {path.replace('|', '/')} |")
    create_markdown_artifact(key="tree-search", markdown="\n".join(lines), description="Tree search over a query set")
