"""The `search` flow: LATTICE tree search over a query set, written into the catalog as a run
(`candidates/tree-NAME`, with lineage to the tree), and optionally as a TREC run file."""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import config_for


def write_trec_run(candidates, path: str, tag: str, doc_names: dict[str, str] | None = None) -> None:
    """The run as TREC lines, through the one TREC writer; `doc_names` (trec_io.source_names) names
    documents by their sources' ids."""
    from tasks.judge import trec_io

    trec_io.write_run(candidates.select(["query_id", "doc_id", "rank", "score"]), path, tag=tag, doc_names=doc_names)


@flow(name="search", log_prints=False)
def search_flow(catalog: str | None = None, config_path: str | None = None, tree: str | None = None,
                queries_file: str | None = None, k: int | None = None, scorer: str | None = None,
                qids: list[str] | None = None, trec_out: str | None = None) -> dict:
    """Search tree NAME for every query (a file, else the catalog's passing queries); publish the run."""
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.prefect_support import stage_task
    from tasks.tree.search_stage import Search

    logger = get_run_logger()
    cfg = config_for(catalog, config_path)
    stage = Search(cfg, tree=tree, queries_file=queries_file, k=k, scorer=scorer, qids=qids)
    with open_run(cfg, "search", params={"tree": stage.tree, "queries": queries_file, "k": k, "scorer": scorer},
                  holder=f"search of tree '{stage.tree}'", logger=logger) as run:
        refs = stage_task(stage, cfg.flow)(run, stage, {})
    s = run.summaries[-1]
    ref = refs[stage.outputs()[0]]
    n = s["notes"]
    if trec_out:
        from tasks.judge.trec_io import source_names

        documents = run.read("documents") if run.catalog.current("documents") is not None else None
        write_trec_run(run.read(ref.name, ref.version), trec_out, f"tree:{stage.tree}:{n['scorer']}",
                       source_names(documents))
    summary = {"run_id": run.run_id, "tree": stage.tree, "dataset": ref.ref, "published": s["published"][ref.name][1],
               "queries": n["queries"], "quarantined": s["rows_quarantined"], "rows": n["rows"],
               "scorer": n["scorer"], "scorer_calls": n["scorer_calls"], "calls_per_query": n["calls_per_query"],
               "failed_slates": n["failed_slates"], "trec_out": trec_out}
    logger.info("search over tree %s: %d queries, %.1f scorer calls per query, %d failed slates, run %s",
                stage.tree, summary["queries"], summary["calls_per_query"], summary["failed_slates"], ref.ref)
    return summary
