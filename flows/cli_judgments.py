"""CLI commands for judgments: agreement tables, TREC imports/exports, rank correlation, judging.

    corpusforge agreement --reference QRELS_OR_JUDGE [--judges DIR_OR_FILES_OR_JUDGES...] [--format table|csv|json]
    corpusforge import-qrels FILES_OR_DIRS... [--judge NAME]
    corpusforge export-qrels --judge NAME OUT
    corpusforge import-run FILES_OR_DIRS...
    corpusforge export-run --tag TAG OUT
    corpusforge rank-correlation --reference JUDGE --judges JUDGE... [--runs TAG...] [--measure nDCG@10]
    corpusforge judge --pairs QRELS_OR_RUN_OR_PARQUET --queries TOPICS --docs PASSAGES [--backend offline|hf|openai|cross_encoder]
    corpusforge judge --config FILE [--pool queries|imported|mining]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FORMAT = dict(choices=["table", "csv", "json"], default="table")


def _config(args):
    from flows.common import config_for

    return config_for(getattr(args, "catalog", None), getattr(args, "config", None))


def _catalog(args):
    from tasks.judge.analysis import sync_judgments_view
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.storage import DataRoot

    cfg = _config(args)
    root = DataRoot(cfg.data_root_uri)
    cat = Catalog(cfg.catalog_path, root)
    sync_judgments_view(cat, root)
    return cfg, cat, root


def _add_catalog_args(p: argparse.ArgumentParser) -> None:
    from flows.cli import add_catalog_args

    add_catalog_args(p)


def _is_path(s: str) -> bool:
    return Path(s).exists()


def _split(items: list[str]) -> tuple[list[str], list[str]]:
    """Command-line items that are files/dirs (to import) vs judge names already in the catalog."""
    paths = [i for i in items if _is_path(i)]
    return paths, [i for i in items if not _is_path(i)]


def cmd_agreement(args) -> int:
    from flows.cli import print_table
    from flows.imports import import_qrels
    from tasks.judge import analysis
    from tasks.judge.imports import expand

    cfg = _config(args)
    ref_paths, ref_names = _split([args.reference])
    judge_paths, judge_names = _split(args.judges or [])
    to_import = ref_paths + judge_paths
    if to_import:
        report = import_qrels(cfg, to_import)
        if report.quarantined:
            print(f"note: {report.quarantined} unparseable lines quarantined "
                  "(see `corpusforge quarantine --stage import_qrels`)", file=sys.stderr)
    _, cat, _ = _catalog(args)
    reference = Path(args.reference).stem if ref_paths else ref_names[0]
    only = None
    if args.judges:
        only = [f.stem for f in expand(judge_paths)] + judge_names
    try:
        table = analysis.agreement(cat, reference, only)
    except KeyError as e:
        raise SystemExit(str(e).strip("'\"")) from None
    if table.num_rows == 0:
        raise SystemExit(f"no judge shares a labelled pair with '{reference}'")
    print_table(table, args.format)
    return 0


def cmd_import_qrels(args) -> int:
    from flows.imports import import_qrels

    report = import_qrels(_config(args), args.paths, [args.judge] if args.judge else None)
    for name, n in report.judges.items():
        print(f"{name}: {n} judgments")
    sets = ", ".join(f"{ref} {'published' if new else 'unchanged'}" for ref, new in report.datasets.values())
    print(f"quarantined {report.quarantined} lines, {report.duplicates} duplicates; {sets}")
    return 0


def cmd_export_qrels(args) -> int:
    from tasks.judge import analysis, trec_io

    _, cat, root = _catalog(args)
    try:
        n = trec_io.write_qrels(analysis.qrels_of(cat, args.judge), args.out, doc_names=_source_names(cat, root))
    except KeyError as e:
        raise SystemExit(str(e).strip("'\"")) from None
    print(f"wrote {n} qrels lines for {args.judge} to {args.out}")
    return 0


def _source_names(cat, root) -> dict[str, str]:
    """doc_id -> source id of the catalog's documents (exports name documents the way users do)."""
    from tasks.judge.trec_io import source_names
    from tasks.runtime.publish import read

    return source_names(read(cat, root, "documents")) if cat.current("documents") is not None else {}


def cmd_import_run(args) -> int:
    from flows.imports import import_runs

    report = import_runs(_config(args), args.paths)
    for tag, n in report.judges.items():
        print(f"{tag}: {n} ranked documents")
    sets = ", ".join(f"{ref} {'published' if new else 'unchanged'}" for ref, new in report.datasets.values())
    print(f"quarantined {report.quarantined} lines; {sets}")
    return 0


def cmd_export_run(args) -> int:
    from tasks.judge import analysis, trec_io

    _, cat, root = _catalog(args)
    try:
        t = analysis.runs_table(cat, root, [args.tag])
    except KeyError as e:
        raise SystemExit(str(e).strip("'\"")) from None
    n = trec_io.write_run(t.rename_columns(["query_id", "doc_id", "rank", "score", "tag"]), args.out,
                          doc_names=_source_names(cat, root))
    print(f"wrote {n} run lines for {args.tag} to {args.out}")
    return 0


def cmd_rank_correlation(args) -> int:
    from flows.cli import print_table
    from tasks.judge import analysis

    _, cat, root = _catalog(args)
    try:
        runs = analysis.runs_table(cat, root, args.runs)
        ref = analysis.qrels_of(cat, args.reference)
        rows = []
        for judge in args.judges:
            r = analysis.system_rank_correlation(ref, analysis.qrels_of(cat, judge), runs, args.measure)
            rows.append({"judge": judge, "kendall_tau": r["kendall_tau"], "spearman_rho": r["spearman_rho"],
                         "n_systems": r["n_systems"], "n_queries": r["n_queries"], "measure": r["measure"]})
    except (KeyError, ValueError) as e:
        raise SystemExit(str(e).strip("'\"")) from None
    print_table(rows, args.format)
    return 0


def cmd_judge(args) -> int:
    if args.pairs and not (args.queries and args.docs):
        raise SystemExit("--pairs needs --queries (topics: qid<TAB>text) and --docs (passages JSONL or Parquet)")
    if not args.pairs and not args.config:
        raise SystemExit("judge what? give --pairs/--queries/--docs, or --config to judge a corpus's queries "
                         "(--pool queries|imported|mining)")
    if args.pairs and args.pool:
        raise SystemExit("--pool judges a pool of the catalog; it does not go with --pairs")
    from flows.judge import judge_flow

    result = judge_flow(pairs=args.pairs, queries=args.queries, docs=args.docs,
                        catalog=args.catalog, config_path=args.config,
                        backend=args.backend, model=args.model, base_url=args.base_url, limit=args.limit,
                        pool=args.pool)
    print(json.dumps(result, indent=2, default=str))
    if result["rows_out"] == 0 and result["rows_quarantined"]:
        return _nothing_judged(result)
    return 0


def _nothing_judged(result: dict) -> int:
    """Every pair was refused: say why (the commonest reasons) and fail, so scripts notice."""
    from tasks.runtime.catalog import Catalog

    rows = Catalog(result["catalog"]).query(
        "SELECT reason, count(*) AS n FROM quarantine WHERE run_id = ? GROUP BY reason ORDER BY n DESC LIMIT 5",
        [result["run_id"]]).to_pylist()
    print(f"error: none of the {result['rows_quarantined']} pairs could be judged; the reasons:", file=sys.stderr)
    for r in rows:
        print(f"  {r['n']:>6}  {r['reason']}", file=sys.stderr)
    print("(all of them: corpusforge quarantine --stage judge --run " + result["run_id"] + ")", file=sys.stderr)
    return 1


def register(sub) -> None:
    import tasks.judge.analysis  # noqa: F401 - registers the judgment views with every catalog opened

    a = sub.add_parser("agreement", help="agreement of judges with a reference (kappa, alpha, ...)")
    _add_catalog_args(a)
    a.add_argument("--reference", required=True, help="reference qrels file, or a judge already in the catalog")
    a.add_argument("--judges", nargs="+", help="qrels files, directories of them, or judge names "
                   "(default: every judge in the catalog)")
    a.add_argument("--format", **FORMAT)
    a.set_defaults(func=cmd_agreement)

    iq = sub.add_parser("import-qrels", help="import TREC qrels label sets as judges (judge = file stem)")
    _add_catalog_args(iq)
    iq.add_argument("paths", nargs="+")
    iq.add_argument("--judge", help="judge name for a single file (default: its file stem)")
    iq.set_defaults(func=cmd_import_qrels)

    eq = sub.add_parser("export-qrels", help="write one judge's grades as TREC qrels")
    _add_catalog_args(eq)
    eq.add_argument("--judge", required=True)
    eq.add_argument("out")
    eq.set_defaults(func=cmd_export_qrels)

    ir = sub.add_parser("import-run", help="import TREC run files (qid Q0 docid rank score tag)")
    _add_catalog_args(ir)
    ir.add_argument("paths", nargs="+")
    ir.set_defaults(func=cmd_import_run)

    er = sub.add_parser("export-run", help="write one imported run as a TREC run file")
    _add_catalog_args(er)
    er.add_argument("--tag", required=True)
    er.add_argument("out")
    er.set_defaults(func=cmd_export_run)

    rc = sub.add_parser("rank-correlation",
                        help="Kendall tau / Spearman rho between the system orders two judges' qrels give")
    _add_catalog_args(rc)
    rc.add_argument("--reference", required=True)
    rc.add_argument("--judges", nargs="+", required=True)
    rc.add_argument("--runs", nargs="+", help="run tags (default: every imported run)")
    rc.add_argument("--measure", default="nDCG@10", help="an ir_measures measure (default nDCG@10)")
    rc.add_argument("--format", **FORMAT)
    rc.set_defaults(func=cmd_rank_correlation)

    j = sub.add_parser("judge", help="grade (query, document) pairs with a judge (the Prefect `judge` flow)")
    _add_catalog_args(j)
    j.add_argument("--pairs", help="qrels/run file or Parquet with query_id, doc_id (default: the "
                   "catalog's synthetic queries x top-k candidates)")
    j.add_argument("--queries", help="topics file (qid<TAB>text) for --pairs")
    j.add_argument("--docs", help="passages for --pairs: JSONL ({docid, doc}, or the manifest's {id, text}) or "
                   "Parquet (doc_id or id, text)")
    j.add_argument("--pool", choices=["queries", "imported", "mining"],
                   help="with --config: the synthetic queries x top-k (default), the imported queries of "
                   "negatives.queries_file x top-k, or the mining candidates (candidates/mining[-name]) + positives")
    j.add_argument("--backend", choices=["offline", "hf", "openai", "cross_encoder"], help="overrides judge.backend")
    j.add_argument("--model", help="overrides the backend's model")
    j.add_argument("--base-url", help="openai backend endpoint")
    j.add_argument("--limit", type=int, help="judge only the first N pairs")
    j.set_defaults(func=cmd_judge)
