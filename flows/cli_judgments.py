"""CLI commands for judgments: agreement tables, TREC imports/exports, rank correlation, judging.

    corpusforge agreement --reference QRELS_OR_JUDGE [--judge FILE_DIR_OR_JUDGE ...] [--save] [--format table|csv|json]
    corpusforge import-qrels FILES_OR_DIRS... [--judge NAME]
    corpusforge export-qrels --judge NAME OUT
    corpusforge import-run FILES_OR_DIRS...
    corpusforge export-run --tag TAG OUT
    corpusforge rank-correlation --reference JUDGE --judge JUDGE ... [--tag TAG ...] [--measure nDCG@10]
    corpusforge judge --pairs QRELS_OR_RUN_OR_PARQUET --queries TOPICS --docs PASSAGES [--backend offline|hf|openai|cross_encoder]
    corpusforge judge --config FILE [--pool queries|imported|mining]
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

from flows.cli_choices import Backend, Pool
from flows.cli_output import error_text


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


def _is_path(s: str) -> bool:
    return Path(s).exists()


def _split(items: list[str]) -> tuple[list[str], list[str]]:
    """Command-line items that are files/dirs (to import) vs judge names already in the catalog."""
    paths = [i for i in items if _is_path(i)]
    return paths, [i for i in items if not _is_path(i)]


def _scratch_agreement(args, ref_paths, ref_names, judge_paths, judge_names):
    """Agreement with files in it, computed in a throwaway catalog: the files are imported there,
    with the catalog judges they are compared to, so the user's catalog is not written."""
    import tempfile

    from flows.imports import import_qrels
    from schemas.config import catalog_config
    from tasks.judge import analysis
    from tasks.judge.stage import label_set
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.publish import read
    from tasks.runtime.storage import DataRoot
    from tasks.runtime.write import seed

    cfg = _config(args)
    with tempfile.TemporaryDirectory(prefix="corpusforge-agreement-") as tmp:
        scratch = catalog_config(Path(tmp) / "catalog.duckdb")
        report = import_qrels(scratch, ref_paths + judge_paths)
        if report.quarantined:
            print(f"note: {report.quarantined} unparseable lines left out", file=sys.stderr)
        wanted = set(ref_names) | set(judge_names)
        if Path(cfg.catalog_path).exists() and (wanted or not args.judges):
            root = DataRoot(cfg.data_root_uri)
            real = Catalog(cfg.catalog_path, root)
            names = wanted or set(analysis.judges(real))
            sroot = DataRoot(scratch.data_root_uri)
            scat = Catalog(scratch.catalog_path, sroot)
            for judge in sorted(names):
                if real.current(label_set(judge)) is not None and scat.current(label_set(judge)) is None:
                    seed(scat, sroot, label_set(judge), read(real, root, label_set(judge)))
        return _agreement_table(scratch, args, ref_paths, ref_names, judge_paths, judge_names)


def _agreement_table(cfg, args, ref_paths, ref_names, judge_paths, judge_names):
    from tasks.judge import analysis
    from tasks.judge.imports import expand
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.storage import DataRoot

    cat = Catalog(cfg.catalog_path, DataRoot(cfg.data_root_uri))
    reference = Path(args.reference).stem if ref_paths else ref_names[0]
    only = [f.stem for f in expand(judge_paths)] + judge_names if args.judges else None
    try:
        table = analysis.agreement(cat, reference, only)
    except KeyError as e:
        raise SystemExit(error_text(e)) from None
    if table.num_rows == 0:
        raise SystemExit(f"no judge shares a labelled pair with '{reference}'")
    return table


def cmd_agreement(args) -> int:
    from flows.cli import print_table
    from flows.imports import import_qrels

    ref_paths, ref_names = _split([args.reference])
    judge_paths, judge_names = _split(args.judges or [])
    files = ref_paths + judge_paths
    if files and not args.save:
        table = _scratch_agreement(args, ref_paths, ref_names, judge_paths, judge_names)
    else:
        cfg = _config(args)
        if files:
            report = import_qrels(cfg, files)
            if report.quarantined:
                print(f"note: {report.quarantined} unparseable lines quarantined "
                      "(see `corpusforge quarantine --stage import_qrels`)", file=sys.stderr)
        elif not Path(cfg.catalog_path).exists():
            raise SystemExit(f"no catalog at {cfg.catalog_path}: pass qrels files, or --catalog PATH / --config FILE")
        table = _agreement_table(cfg, args, ref_paths, ref_names, judge_paths, judge_names)
    print_table(table, args.format)
    return 0


def cmd_import_qrels(args) -> int:
    from flows.imports import import_qrels

    report = import_qrels(_config(args), args.paths, [args.judge] if args.judge else None)
    return _print_import(report, "judgments", f", {report.duplicates} duplicates")


def _print_import(report, what: str, extra: str = "") -> int:
    """One summary for every import: rows per judge or tag, then what was quarantined and published."""
    for name, n in report.judges.items():
        print(f"{name}: {n} {what}")
    sets = ", ".join(f"{ref} {'published' if new else 'unchanged'}" for ref, new in report.datasets.values())
    print(f"quarantined {report.quarantined} lines{extra}; {sets}")
    return 0


def cmd_export_qrels(args) -> int:
    from tasks.judge import analysis, trec_io

    _, cat, root = _catalog(args)
    try:
        n = trec_io.write_qrels(analysis.qrels_of(cat, args.judge), args.out, doc_names=_source_names(cat, root))
    except (KeyError, ValueError) as e:
        raise SystemExit(error_text(e)) from None
    print(f"wrote {n} qrels lines for {args.judge} to {args.out}")
    return 0


def _source_names(cat, root) -> dict[str, str]:
    """doc_id -> source id of the catalog's documents (exports name documents the way users do)."""
    from tasks.judge.trec_io import source_names
    from tasks.runtime.publish import read

    return source_names(read(cat, root, "documents")) if cat.current("documents") is not None else {}


def cmd_import_run(args) -> int:
    from flows.imports import import_runs

    return _print_import(import_runs(_config(args), args.paths), "ranked documents")


def cmd_export_run(args) -> int:
    from tasks.judge import analysis, trec_io

    _, cat, root = _catalog(args)
    try:
        t = analysis.runs_table(cat, root, [args.tag])
        n = trec_io.write_run(t.rename_columns(["query_id", "doc_id", "rank", "score", "tag"]), args.out,
                              doc_names=_source_names(cat, root))
    except (KeyError, ValueError) as e:
        raise SystemExit(error_text(e)) from None
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
        raise SystemExit(error_text(e)) from None
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


def register(app) -> None:
    import typer

    from flows.cli import CatalogOpt, ConfigOpt, FormatOpt, OutputFormat, QuietOpt, ns

    Paths = Annotated[list[str], typer.Argument(help="TREC files or directories of them")]
    Out = Annotated[str, typer.Argument(help="file to write")]
    Judge = Annotated[str, typer.Option("--judge", help="judge name in the catalog")]
    Reference = Annotated[str, typer.Option("--reference", help="reference qrels file, or a judge in the catalog")]

    @app.command("agreement")
    def agreement(reference: Reference,
                  judge: Annotated[Optional[list[str]], typer.Option(
                      "--judge", help="qrels file, directory of them, or judge name; repeat for several "
                      "(default: every judge in the catalog)")] = None,
                  save: Annotated[bool, typer.Option("--save", help="also import the given qrels files into "
                                                     "the catalog (default: compute only)")] = False,
                  catalog: CatalogOpt = None, config: ConfigOpt = None,
                  format: FormatOpt = OutputFormat.table) -> int:
        """Agreement of judges with a reference (kappa, alpha, ...); writes nothing unless --save."""
        return cmd_agreement(ns(reference=reference, judges=judge, save=save, catalog=catalog, config=config,
                                format=format))

    @app.command("import-qrels")
    def import_qrels(paths: Paths,
                     judge: Annotated[Optional[str], typer.Option("--judge", help="judge name for a single "
                                                                  "file (default: its file stem)")] = None,
                     catalog: CatalogOpt = None, config: ConfigOpt = None) -> int:
        """Import TREC qrels label sets as judges (judge = file stem)."""
        return cmd_import_qrels(ns(paths=paths, judge=judge, catalog=catalog, config=config))

    @app.command("export-qrels")
    def export_qrels(out: Out, judge: Judge, catalog: CatalogOpt = None, config: ConfigOpt = None) -> int:
        """Write one judge's grades as TREC qrels."""
        return cmd_export_qrels(ns(out=out, judge=judge, catalog=catalog, config=config))

    @app.command("import-run")
    def import_run(paths: Paths, catalog: CatalogOpt = None, config: ConfigOpt = None) -> int:
        """Import TREC run files (qid Q0 docid rank score tag)."""
        return cmd_import_run(ns(paths=paths, catalog=catalog, config=config))

    @app.command("export-run")
    def export_run(out: Out, tag: Annotated[str, typer.Option("--tag", help="run tag of an imported run")],
                   catalog: CatalogOpt = None, config: ConfigOpt = None) -> int:
        """Write one imported run as a TREC run file."""
        return cmd_export_run(ns(out=out, tag=tag, catalog=catalog, config=config))

    @app.command("rank-correlation")
    def rank_correlation(reference: Annotated[str, typer.Option("--reference", help="reference judge")],
                         judge: Annotated[list[str], typer.Option("--judge", help="judge to compare; repeat")],
                         tag: Annotated[Optional[list[str]], typer.Option(
                             "--tag", help="run tag; repeat (default: every imported run)")] = None,
                         measure: Annotated[str, typer.Option("--measure", help="an ir_measures measure")] = "nDCG@10",
                         catalog: CatalogOpt = None, config: ConfigOpt = None,
                         format: FormatOpt = OutputFormat.table) -> int:
        """Kendall tau / Spearman rho between the system orders two judges' qrels give."""
        return cmd_rank_correlation(ns(reference=reference, judges=judge, runs=tag, measure=measure,
                                       catalog=catalog, config=config, format=format))

    @app.command("judge")
    def judge_cmd(pairs: Annotated[Optional[str], typer.Option("--pairs", help="qrels/run file or Parquet with "
                  "query_id, doc_id (default: the catalog's queries x top-k candidates)")] = None,
                  queries: Annotated[Optional[str], typer.Option("--queries", help="topics file (qid<TAB>text) "
                                                                 "for --pairs")] = None,
                  docs: Annotated[Optional[str], typer.Option("--docs", help="passages for --pairs: JSONL ({docid, "
                                                              "doc}, or the manifest's {id, text}) or Parquet "
                                                              "(doc_id or id, text)")] = None,
                  pool: Annotated[Optional[Pool], typer.Option("--pool", help="with --config: the synthetic queries "
                                                               "x top-k (default), the imported queries of "
                                                               "negatives.queries_file x top-k, or the mining "
                                                               "candidates + positives")] = None,
                  backend: Annotated[Optional[Backend], typer.Option("--backend", help="overrides "
                                                                     "judge.backend")] = None,
                  model: Annotated[Optional[str], typer.Option("--model", help="overrides the backend's "
                                                               "model")] = None,
                  base_url: Annotated[Optional[str], typer.Option("--base-url", help="openai backend "
                                                                  "endpoint")] = None,
                  limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="judge only the first N "
                                                               "pairs")] = None,
                  catalog: CatalogOpt = None, config: ConfigOpt = None, quiet: QuietOpt = False) -> int:
        """Grade (query, document) pairs with a judge (the Prefect `judge` flow)."""
        from flows.cli import quiet_progress

        with quiet_progress(quiet):
            return cmd_judge(ns(pairs=pairs, queries=queries, docs=docs, backend=backend.value if backend else None,
                                model=model, base_url=base_url, limit=limit, catalog=catalog, config=config,
                                pool=pool.value if pool else None))
