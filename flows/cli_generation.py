"""CLI commands for captions and synthetic queries, read from the current published versions.

    corpusforge queries [--summary] [--target text|image|text+image] [--failed | --passed] [--limit N]
    corpusforge captions [--source alt_text|model] [--limit N]
"""

from typing import Annotated, Optional

from flows.cli_choices import Target, CaptionSource


def _current(args, name: str):
    from flows.cli import open_catalog

    cat = open_catalog(args)
    ds = cat.current(name)
    if ds is None:
        raise SystemExit(f"the catalog has no current '{name}' dataset: run `corpusforge build --config FILE` first")
    return cat, ds


def cmd_queries(args) -> int:
    from flows.cli import print_table

    cat, ds = _current(args, "queries")
    if args.summary:
        from tasks.queries.stage import summary

        table = cat.query("SELECT * FROM queries")
        s = summary(table)
        print(f"queries v{ds.version}: {table.num_rows} candidates")
        print_table([{"target": t} | c for t, c in s["per_target"].items()], args.format, args.width)
        print_table([{"filter": f} | r for f, r in s["filters"].items()], args.format, args.width)
        return 0
    where, params = ["true"], []
    if args.target:
        where.append("target_modality = ?")
        params.append(args.target)
    if args.failed:
        where.append("NOT passed")
    if args.passed:
        where.append("passed")
    params.append(args.limit)
    print_table(cat.query(
        "SELECT query_id, target_modality AS target, text, passed, reject_reason, roundtrip_rank, "
        "round(copy_overlap, 2) AS copy_overlap, generator, prompt_version, source_text "
        f"FROM queries WHERE {' AND '.join(where)} ORDER BY query_id LIMIT ?", params), args.format, args.width)
    return 0


def cmd_captions(args) -> int:
    from flows.cli import print_table

    cat, ds = _current(args, "captions")
    where, params = "true", []
    if args.source:
        where = "source = ?"
        params.append(args.source)
    params.append(args.limit)
    print_table(cat.query("SELECT doc_id, source, captioner, prompt_version, text FROM captions "
                          f"WHERE {where} ORDER BY doc_id, source LIMIT ?", params), args.format, args.width)
    return 0


def register(app) -> None:
    import typer

    from flows.cli import CatalogOpt, ConfigOpt, FormatOpt, LimitOpt, OutputFormat, WidthOpt, ns

    @app.command("queries")
    def queries(summary: Annotated[bool, typer.Option("--summary", help="counts per target and pass rate per "
                                                      "filter")] = False,
                target: Annotated[Optional[Target], typer.Option("--target", help="only this target "
                                                                 "modality")] = None,
                failed: Annotated[bool, typer.Option("--failed", help="only queries that failed a filter")] = False,
                passed: Annotated[bool, typer.Option("--passed", help="only queries that passed every "
                                                     "filter")] = False,
                limit: LimitOpt = 20, catalog: CatalogOpt = None, config: ConfigOpt = None,
                format: FormatOpt = OutputFormat.table, width: WidthOpt = 60) -> int:
        """Synthetic queries with their filter outcomes."""
        if failed and passed:
            raise typer.BadParameter("give --failed or --passed, not both", param_hint="--failed/--passed")
        return cmd_queries(ns(summary=summary, target=target.value if target else None, failed=failed,
                              passed=passed, limit=limit, catalog=catalog, config=config, format=format, width=width))

    @app.command("captions")
    def captions(source: Annotated[Optional[CaptionSource], typer.Option("--source", help="only this caption "
                                                                         "source")] = None,
                 limit: LimitOpt = 20, catalog: CatalogOpt = None, config: ConfigOpt = None,
                 format: FormatOpt = OutputFormat.table, width: WidthOpt = 60) -> int:
        """Image captions (alt-text and model)."""
        return cmd_captions(ns(source=source.value if source else None, limit=limit, catalog=catalog,
                               config=config, format=format, width=width))
