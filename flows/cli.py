"""The `corpusforge` command line.

Core commands live here; each capability adds its own from a `flows/cli_<area>.py` module
listed in COMMAND_MODULES, which exposes `register(subparsers)`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

COMMAND_MODULES: list[str] = ["flows.cli_judgments", "flows.cli_tree", "flows.cli_mining", "flows.cli_generation",
                              "flows.cli_evaluate", "flows.cli_train"]

DEFAULT_CATALOG = ".corpusforge/catalog.duckdb"


def _env_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def catalog_path(args) -> str:
    """--catalog, else the catalog of --config, else $CORPUSFORGE_CATALOG, else the default."""
    if getattr(args, "catalog", None):
        return args.catalog
    if getattr(args, "config", None):
        from schemas.config import load_config

        return load_config(args.config).catalog_path
    return os.environ.get("CORPUSFORGE_CATALOG", DEFAULT_CATALOG)


def open_catalog(args, must_exist: bool = True):
    from flows.common import config_for
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.storage import DataRoot

    cfg = config_for(getattr(args, "catalog", None), getattr(args, "config", None))
    path = cfg.catalog_path
    if must_exist and not Path(path).exists():
        raise SystemExit(f"no catalog at {path}: run `corpusforge build --config FILE` first, "
                         "or pass --catalog PATH / --config FILE")
    return Catalog(path, DataRoot(cfg.data_root_uri), read_only=True)  # every caller only reads


def add_catalog_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", help=f"DuckDB catalog file (default $CORPUSFORGE_CATALOG or {DEFAULT_CATALOG})")
    p.add_argument("--config", help="a build config; its catalog is used")


def print_table(table, fmt: str = "table", max_width: int = 60) -> None:
    rows = table.to_pylist() if hasattr(table, "to_pylist") else table
    cols = table.column_names if hasattr(table, "column_names") else (list(rows[0]) if rows else [])
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))  # JSON escapes every control character
        return
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        for r in rows:
            w.writerow([_fmt(r[c], None) for c in cols])
        return
    cells = [[_fmt(r[c], max_width) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(f"({len(rows)} rows)")


def _fmt(v, width: int | None) -> str:
    if v is None:
        s = ""
    elif isinstance(v, float):
        s = f"{v:.4f}"
    else:
        s = str(v)
    from tasks.runtime.terminal import terminal_safe

    s = terminal_safe(s)
    return s if width is None or len(s) <= width else s[: width - 1] + "…"


# ---- commands --------------------------------------------------------------------------------
def cmd_build(args) -> int:
    from flows.build import build

    result = build(config_path=args.config)
    print_build_summary(result)
    return 0


def print_build_summary(result: dict) -> None:
    print()
    print(f"corpusforge build {result['run_id']}: completed")
    if result.get("note"):
        print(result["note"])
    print()
    print("Stages:")
    for s in result["stages"]:
        print(f"  {s['stage']:<12} in={s['rows_in']:<6} out={s['rows_out']:<6} quarantined={s['rows_quarantined']:<4} "
              f"deduplicated={s['rows_deduplicated']:<4} model_calls={s['model_calls']:<6} "
              f"cache_hits={s['cache_hits']:<6} {s['seconds']:.2f}s")
    print()
    print("Datasets (current versions):")
    for name, d in sorted(result["datasets"].items()):
        print(f"  {name:<22} v{d['version']:<4} {d['rows']} rows")
    print()
    print("Quarantined this run, by reason:")
    if not result["quarantine"]:
        print("  none")
    for q in result["quarantine"]:
        print(f"  {q['n']:>4}  [{q['stage']}] {q['reason']}")
    print()
    print(f"Catalog:   {result['catalog']}")
    print(f"Data root: {result['data_root']}")
    print()
    print("Look at it with SQL:")
    exe = _invocation()
    print(f"  {exe} sql --catalog {result['catalog']} \"SELECT name, version, row_count, created_at FROM datasets WHERE is_current\"")
    print(f"  {exe} sql --catalog {result['catalog']} \"SELECT modality, count(*) AS n, any_value(text) AS example FROM documents GROUP BY ALL\"")


def _invocation() -> str:
    """How the user can call us again: `corpusforge` when on PATH, else the script's path."""
    import shutil

    script = Path(sys.argv[0])
    if script.name == "corpusforge" and shutil.which("corpusforge") != str(script.resolve()):
        try:
            return os.path.relpath(script)
        except ValueError:
            return str(script)
    return "corpusforge"


def cmd_datasets(args) -> int:
    cat = open_catalog(args)
    where = "" if args.all else "WHERE is_current"
    print_table(cat.query(f"SELECT name, version, row_count, is_current, created_at, run_id, "
                          f"substr(content_hash, 1, 12) AS content_hash, path FROM datasets {where} "
                          "ORDER BY name, version"), args.format)
    return 0


def cmd_lineage(args) -> int:
    cat = open_catalog(args)
    try:
        table = cat.lineage(args.dataset, args.version)
    except KeyError as e:
        raise SystemExit(str(e).strip("'\"")) from None
    if table.num_rows == 0:
        print(f"{args.dataset} has no recorded parents (it is a source dataset)")
        return 0
    print_table(table, args.format)
    return 0


def cmd_quarantine(args) -> int:
    cat = open_catalog(args)
    if args.summary:
        print_table(cat.query("SELECT stage, reason, count(*) AS n FROM quarantine GROUP BY ALL ORDER BY n DESC"),
                    args.format)
        return 0
    where, params = [], []
    if args.stage:
        where.append("stage = ?")
        params.append(args.stage)
    if args.run:
        where.append("run_id = ?")
        params.append(args.run)
    sql = ("SELECT run_id, stage, key, reason FROM quarantine "
           + (f"WHERE {' AND '.join(where)} " if where else "") + f"ORDER BY created_at DESC LIMIT {int(args.limit)}")
    print_table(cat.query(sql, params), args.format, max_width=100)
    return 0


def cmd_runs(args) -> int:
    cat = open_catalog(args)
    print_table(cat.query("SELECT r.run_id, r.flow, r.status, r.started_at, r.finished_at, "
                          "sum(s.model_calls) AS model_calls, r.message FROM runs r "
                          "LEFT JOIN stage_runs s USING (run_id) GROUP BY ALL ORDER BY r.started_at DESC "
                          f"LIMIT {int(args.limit)}"), args.format)
    return 0


def cmd_sql(args) -> int:
    import duckdb

    cat = open_catalog(args)
    try:
        table = cat.query(args.query, read_only=True)
    except duckdb.Error as e:
        raise SystemExit(f"SQL error: {e}") from None
    print_table(table, args.format, max_width=args.max_width)
    return 0


def cmd_serve(args) -> int:
    from flows.deployments import serve

    serve(args.config, cron=args.cron, name=args.name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corpusforge", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build or refresh a corpus (the Prefect `build` flow)")
    b.add_argument("--config", required=True, help="YAML run config")
    b.set_defaults(func=cmd_build)

    fmt = dict(choices=["table", "csv", "json"], default="table")
    d = sub.add_parser("datasets", help="dataset versions in the catalog")
    add_catalog_args(d)
    d.add_argument("--all", action="store_true", help="every version, not only the current ones")
    d.add_argument("--format", **fmt)
    d.set_defaults(func=cmd_datasets)

    li = sub.add_parser("lineage", help="the parent datasets a dataset version was computed from")
    add_catalog_args(li)
    li.add_argument("dataset")
    li.add_argument("--version", type=int)
    li.add_argument("--format", **fmt)
    li.set_defaults(func=cmd_lineage)

    q = sub.add_parser("quarantine", help="rejected inputs with their reasons")
    add_catalog_args(q)
    q.add_argument("--stage")
    q.add_argument("--run")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--summary", action="store_true", help="counts by stage and reason")
    q.add_argument("--format", **fmt)
    q.set_defaults(func=cmd_quarantine)

    r = sub.add_parser("runs", help="recent runs with their status and model calls")
    add_catalog_args(r)
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--format", **fmt)
    r.set_defaults(func=cmd_runs)

    s = sub.add_parser("sql", help="ad-hoc SQL on the catalog (views included)")
    add_catalog_args(s)
    s.add_argument("query")
    s.add_argument("--format", **fmt)
    s.add_argument("--max-width", type=int, default=80)
    s.set_defaults(func=cmd_sql)

    sv = sub.add_parser("serve", help="register the build as a scheduled Prefect deployment and serve it")
    sv.add_argument("--config", required=True)
    sv.add_argument("--cron", default="0 3 * * *", help="refresh schedule (default: daily at 03:00)")
    sv.add_argument("--name", default=None, help="deployment name (default: refresh-<config name>)")
    sv.set_defaults(func=cmd_serve)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    args = build_parser().parse_args(argv)
    from schemas.config import ConfigError
    from tasks.runtime.catalog import CatalogError
    from tasks.runtime.publish import OldCatalog

    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (OldCatalog, CatalogError) as e:  # a state of the catalog the user resolves, not a bug
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
