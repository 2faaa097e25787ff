"""Judgment analysis in SQL: the views and macros of `analysis.sql`, created with every catalog.

Importing this module registers the DDL with the catalog (`register_ddl`), so every catalog
opened afterwards has the views. The `judgments` view is re-pointed at the union of the current
label sets (`judgments/<judge>`) by `sync_judgments_view`, after every publish of one, so analysts can also open the catalog file in any DuckDB client and run:

    SELECT * FROM judgment_agreement('llmjudge_test_qrel_idx');

Kendall's tau and Spearman's rho between system rankings need nDCG@10 per run, which comes
from ir_measures (pytrec_eval) rather than SQL; `system_rank_correlation` pulls runs and
qrels out of the catalog with SQL and does that part in Python.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks.runtime.catalog import Catalog, DatasetVersion, register_collection, register_ddl
from tasks.runtime.storage import DataRoot

log = logging.getLogger(__name__)

SQL = (Path(__file__).with_name("analysis.sql")).read_text()
register_ddl(SQL)

JUDGMENTS_PREFIX = "judgments/"  # one dataset per label set; the view `judgments` is their union
RUNS = "candidates/runs"  # imported TREC runs live beside the pipeline's candidates
AGREEMENT_COLUMNS = ["judge", "kappa", "alpha", "kappa_0_123", "kappa_01_23", "kappa_012_3",
                     "leniency", "n_pairs"]
_COLUMNS = "query_id, doc_id, judge, grade::TINYINT AS grade, p_grade::FLOAT[4] AS p_grade, " \
           "expected_grade::FLOAT AS expected_grade, status, raw"


def label_sets(catalog: Catalog) -> list[DatasetVersion]:
    return [v for n, v in sorted(catalog.current_all().items()) if n.startswith(JUDGMENTS_PREFIX)]


# SQL that mentions `judgment...` sees every current label set as one `judgments` view
register_collection(JUDGMENTS_PREFIX, "judgments", _COLUMNS, "judgment")


def sync_judgments_view(catalog: Catalog, root: DataRoot | None = None) -> list[DatasetVersion]:
    """The label sets the `judgments` view unites (it is registered on each query's connection)."""
    return label_sets(catalog)


def judges(catalog: Catalog) -> list[str]:
    return catalog.query("SELECT DISTINCT judge FROM judgments ORDER BY judge").column("judge").to_pylist()


def _check_judge(catalog: Catalog, judge: str) -> None:
    known = judges(catalog)
    if judge not in known:
        hint = f"; known judges: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}" if known else \
            "; the catalog has no judgments yet (import a qrels file first)"
        raise KeyError(f"no judge named '{judge}' in {catalog.path}{hint}")


def agreement(catalog: Catalog, reference: str, only: list[str] | None = None) -> pa.Table:
    """One row per judge against the reference: kappa, alpha, binarized kappas, leniency, n_pairs."""
    _check_judge(catalog, reference)
    t = catalog.query("SELECT * FROM judgment_agreement(?)", [reference])
    if only is not None:
        missing = sorted(set(only) - set(t.column("judge").to_pylist()) - {reference})
        if missing:
            raise KeyError(f"judges without any pair in common with '{reference}': {', '.join(missing)}")
        t = catalog.query("SELECT * FROM judgment_agreement(?) WHERE list_contains(?, judge)",
                          [reference, only])
    return t.select(AGREEMENT_COLUMNS)


def confusion(catalog: Catalog, reference: str, judge: str | None = None) -> pa.Table:
    _check_judge(catalog, reference)
    sql = "SELECT * FROM judgment_confusion(?)" + (" WHERE judge = ?" if judge else "")
    return catalog.query(sql, [reference] + ([judge] if judge else []))


def label_distribution(catalog: Catalog) -> pa.Table:
    return catalog.query("SELECT * FROM judgment_label_distribution")


def query_agreement(catalog: Catalog, reference: str) -> pa.Table:
    _check_judge(catalog, reference)
    return catalog.query("SELECT * FROM judgment_query_agreement(?)", [reference])


def pairs(catalog: Catalog, reference: str, judge: str) -> pa.Table:
    """The matched (reference grade, judge grade) pairs, e.g. for an independent check."""
    return catalog.query("SELECT * FROM judgment_pairs(?) WHERE judge = ? ORDER BY query_id, doc_id",
                         [reference, judge])


# ---- system rankings ---------------------------------------------------------------------------
def qrels_of(catalog: Catalog, judge: str) -> pa.Table:
    """A judge's labels as qrels (query_id, doc_id, relevance), straight from SQL."""
    _check_judge(catalog, judge)
    return catalog.query("SELECT query_id, doc_id, grade::INTEGER AS relevance FROM judgment_labels "
                         "WHERE judge = ?", [judge])


def system_scores(qrels: pa.Table, runs: pa.Table, measure: str = "nDCG@10") -> dict[str, float]:
    """Mean `measure` per run (retriever) under one qrels, computed by ir_measures."""
    import ir_measures

    from tasks.judge import trec_io

    m = ir_measures.parse_measure(measure)
    q = trec_io.ir_qrels(qrels)
    scores = {}
    for tag in sorted(set(runs.column("retriever").to_pylist())):
        run = runs.filter(pc.equal(runs["retriever"], tag))
        # the stored rank is the exact order (float32 scores could tie); rank it by -rank
        run = run.set_column(run.schema.get_field_index("score"), "score",
                             pc.negate(pc.cast(run["rank"], pa.float64())))
        scores[tag] = float(ir_measures.calc_aggregate([m], q, trec_io.ir_run(run))[m])
    return scores


def system_rank_correlation(qrels_a: pa.Table, qrels_b: pa.Table, runs: pa.Table,
                            measure: str = "nDCG@10") -> dict:
    """Kendall's tau and Spearman's rho between the system orders that two qrels give.

    Only queries judged in both qrels count, so the two orders see the same topics.
    """
    from scipy.stats import kendalltau, spearmanr

    common = set(qrels_a.column("query_id").to_pylist()) & set(qrels_b.column("query_id").to_pylist())
    keep = pa.array(sorted(common))
    qa = qrels_a.filter(pc.is_in(qrels_a["query_id"], keep))
    qb = qrels_b.filter(pc.is_in(qrels_b["query_id"], keep))
    rr = runs.filter(pc.is_in(runs["query_id"], keep))
    a, b = system_scores(qa, rr, measure), system_scores(qb, rr, measure)
    systems = sorted(a)
    if len(systems) < 3:
        raise ValueError(f"rank correlation needs at least 3 runs over common queries, got {len(systems)}")
    x, y = [a[s] for s in systems], [b[s] for s in systems]
    return {"measure": measure, "n_systems": len(systems), "n_queries": len(common),
            "kendall_tau": float(kendalltau(x, y).statistic), "spearman_rho": float(spearmanr(x, y).statistic),
            "scores_a": a, "scores_b": b}


def runs_table(catalog: Catalog, root: DataRoot, tags: list[str] | None = None) -> pa.Table:
    """Imported runs from the catalog (all, or the given tags)."""
    from tasks.runtime.publish import read

    cur = catalog.current(RUNS)
    if cur is None:
        raise KeyError(f"no runs imported in {catalog.path}; use `corpusforge import-run RUN_FILES...`")
    t = read(catalog, root, RUNS)
    if tags:
        missing = sorted(set(tags) - set(t.column("retriever").to_pylist()))
        if missing:
            raise KeyError(f"runs not in the catalog: {', '.join(missing)}")
        t = t.filter(pc.is_in(t["retriever"], pa.array(tags)))
    return t
