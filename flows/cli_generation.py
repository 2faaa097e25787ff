"""CLI commands for captions and synthetic queries, read from the current published versions.

    corpusforge queries [--summary] [--target text|image|text+image] [--failed | --passed] [--limit N]
    corpusforge captions [--source alt_text|model] [--limit N]
"""
from __future__ import annotations



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
        print_table([{"target": t} | c for t, c in s["per_target"].items()], args.format)
        print_table([{"filter": f} | r for f, r in s["filters"].items()], args.format)
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
        f"FROM queries WHERE {' AND '.join(where)} ORDER BY query_id LIMIT ?", params), args.format)
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
                          f"WHERE {where} ORDER BY doc_id, source LIMIT ?", params), args.format)
    return 0


def register(subparsers) -> None:
    from flows.cli import add_catalog_args

    p = subparsers.add_parser("queries", help="synthetic queries with their filter outcomes")
    add_catalog_args(p)
    p.add_argument("--summary", action="store_true", help="counts per target and pass rate per filter")
    p.add_argument("--target", choices=["text", "image", "text+image"])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--failed", action="store_true", help="only queries that failed a filter")
    group.add_argument("--passed", action="store_true", help="only queries that passed every filter")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_queries)

    p = subparsers.add_parser("captions", help="image captions (alt-text and model)")
    add_catalog_args(p)
    p.add_argument("--source", choices=["alt_text", "model"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_captions)

