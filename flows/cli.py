"""The `corpusforge` command line (typer).

One convention for every command:
- `--catalog PATH` or `--config FILE` names the catalog a command reads or writes;
- `--format table|csv|json` is the output format of anything that prints rows (export kinds are `--kind`);
- `--width N` caps a printed column or line, `--limit N` the rows, `--k N` the hits of a search;
- `--quiet` on commands that do long work turns progress bars and progress lines off;
- a repeatable option is singular (`--judge A --judge B`).

Core commands live here; each capability adds its own from a `flows/cli_<area>.py` module listed
in COMMAND_MODULES, which exposes `register(app)`. An error the user can fix prints one message
with the remedy (exit 1; 2 for a bad config or usage), never a traceback.
"""

import contextlib
import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import typer

from flows.cli_output import OutputFormat, error_text, print_build_summary, print_table  # noqa: F401 - used by cli_* modules

COMMAND_MODULES: list[str] = ["flows.cli_judgments", "flows.cli_tree", "flows.cli_mining", "flows.cli_generation",
                              "flows.cli_evaluate", "flows.cli_train"]

DEFAULT_CATALOG = ".corpusforge/catalog.duckdb"

# ---- the shared options -----------------------------------------------------------------------
CatalogOpt = Annotated[Optional[str], typer.Option(
    "--catalog", help=f"DuckDB catalog file (default: $CORPUSFORGE_CATALOG, else {DEFAULT_CATALOG})")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", help="a build config (YAML); its catalog is used")]
ConfigReq = Annotated[str, typer.Option("--config", help="YAML build config")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="output format", case_sensitive=False)]
WidthOpt = Annotated[int, typer.Option("--width", min=10, help="characters per printed column (or line)")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, help="rows to print")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or progress lines")]

app = typer.Typer(name="corpusforge", help="Multimodal retrieval corpora and graded relevance judgments.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("corpusforge")
    except PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        print(f"corpusforge {version()}")
        raise typer.Exit()


@app.callback()
def _root(show_version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                     help="print the version and exit")] = False) -> None:
    """Multimodal retrieval corpora and graded relevance judgments."""


def _env_defaults() -> None:
    """Quiet by default: no telemetry, no weight-loading bars, no Ray C++ or library chatter."""
    for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                 "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                 "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                 "RAY_BACKEND_LOG_LEVEL": "error", "RAY_DEDUP_LOGS": "1", "GLOG_minloglevel": "2"}.items():
        os.environ.setdefault(k, v)
    import logging

    for name in ("great_expectations", "ray", "urllib3", "httpx", "filelock", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_progress(quiet: bool):
    """`--quiet`: progress off for this command (the env reaches Ray workers and Prefect tasks)."""
    old = os.environ.get("CORPUSFORGE_QUIET")
    if quiet:
        os.environ["CORPUSFORGE_QUIET"] = "1"
    try:
        yield
    finally:
        if quiet:
            if old is None:
                os.environ.pop("CORPUSFORGE_QUIET", None)
            else:
                os.environ["CORPUSFORGE_QUIET"] = old


# ---- catalogs -----------------------------------------------------------------------------------
def catalog_path(args) -> str:
    """--catalog, else the catalog of --config, else $CORPUSFORGE_CATALOG, else the default."""
    if getattr(args, "catalog", None):
        return args.catalog
    if getattr(args, "config", None):
        from schemas.config import load_config

        return load_config(args.config).catalog_path
    return os.environ.get("CORPUSFORGE_CATALOG", DEFAULT_CATALOG)


def open_catalog(args, must_exist: bool = True):
    import tasks.judge.analysis  # noqa: F401 - the judgment views and macros, in every catalog opened
    from flows.common import config_for
    from tasks.runtime.catalog import Catalog
    from tasks.runtime.storage import DataRoot

    cfg = config_for(getattr(args, "catalog", None), getattr(args, "config", None))
    path = cfg.catalog_path
    if must_exist and not Path(path).exists():
        raise SystemExit(f"no catalog at {path}: run `corpusforge build --config FILE` first, "
                         "or pass --catalog PATH / --config FILE")
    return Catalog(path, DataRoot(cfg.data_root_uri), read_only=True)  # every caller only reads


def ns(**kwargs) -> SimpleNamespace:
    """The parsed options as one object, for the command bodies."""
    return SimpleNamespace(**kwargs)


# ---- commands --------------------------------------------------------------------------------
@app.command("build")
def build_cmd(config: ConfigReq, quiet: QuietOpt = False) -> int:
    """Build or refresh a corpus (the Prefect `build` flow)."""
    from schemas.config import check_buildable, load_config

    check_buildable(load_config(config))  # a bad config fails here, before Prefect starts
    from flows.build import build

    with quiet_progress(quiet):
        result = build(config_path=config)
    print_build_summary(result, _invocation())
    return 0


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


@app.command("datasets")
def datasets_cmd(catalog: CatalogOpt = None, config: ConfigOpt = None,
                 all: Annotated[bool, typer.Option("--all", help="every version, not only the current ones")] = False,
                 format: FormatOpt = OutputFormat.table, width: WidthOpt = 60) -> int:
    """Dataset versions in the catalog."""
    cat = open_catalog(ns(catalog=catalog, config=config))
    where = "" if all else "WHERE is_current"
    print_table(cat.query(f"SELECT name, version, row_count, is_current, created_at, run_id, "
                          f"substr(content_hash, 1, 12) AS content_hash, path FROM datasets {where} "
                          "ORDER BY name, version"), format, width)
    return 0


@app.command("lineage")
def lineage_cmd(dataset: Annotated[str, typer.Argument(help="dataset name, e.g. embeddings/text")],
                version: Annotated[Optional[int], typer.Option("--version", help="dataset version (default: current)")] = None,
                catalog: CatalogOpt = None, config: ConfigOpt = None,
                format: FormatOpt = OutputFormat.table, width: WidthOpt = 60) -> int:
    """The parent datasets a dataset version was computed from, each edge once."""
    cat = open_catalog(ns(catalog=catalog, config=config))
    try:
        table = cat.lineage(dataset, version)
    except KeyError as e:
        raise SystemExit(error_text(e)) from None
    if table.num_rows == 0:
        print(f"{dataset} has no recorded parents (it is a source dataset)")
        return 0
    print_table(table, format, width)
    return 0


@app.command("quarantine")
def quarantine_cmd(catalog: CatalogOpt = None, config: ConfigOpt = None,
                   stage: Annotated[Optional[str], typer.Option("--stage", help="only this stage")] = None,
                   run: Annotated[Optional[str], typer.Option("--run", help="only this run id")] = None,
                   code: Annotated[Optional[str], typer.Option("--code", help="only this reason code")] = None,
                   summary: Annotated[bool, typer.Option("--summary", help="counts by stage and reason code")] = False,
                   limit: LimitOpt = 50, format: FormatOpt = OutputFormat.table, width: WidthOpt = 100) -> int:
    """Rejected inputs with their reason code and detail."""
    cat = open_catalog(ns(catalog=catalog, config=config))
    where, params = [], []
    for col, val in (("stage", stage), ("run_id", run), ("code", code)):
        if val:
            where.append(f"{col} = ?")
            params.append(val)
    cond = f"WHERE {' AND '.join(where)} " if where else ""
    if summary:
        print_table(cat.query(f"SELECT stage, code, count(*) AS n, any_value(reason) AS example FROM quarantine "
                              f"{cond}GROUP BY ALL ORDER BY n DESC, stage, code", params), format, width)
        return 0
    print_table(cat.query(f"SELECT run_id, stage, key, code, reason FROM quarantine {cond}"
                          f"ORDER BY created_at DESC LIMIT {int(limit)}", params), format, width)
    return 0


@app.command("runs")
def runs_cmd(catalog: CatalogOpt = None, config: ConfigOpt = None, limit: LimitOpt = 20,
             format: FormatOpt = OutputFormat.table, width: WidthOpt = 60) -> int:
    """Recent runs with their status and model calls."""
    cat = open_catalog(ns(catalog=catalog, config=config))
    print_table(cat.query("SELECT r.run_id, r.flow, r.status, r.started_at, r.finished_at, "
                          "sum(s.model_calls) AS model_calls, r.message FROM runs r "
                          "LEFT JOIN stage_runs s USING (run_id) GROUP BY ALL ORDER BY r.started_at DESC "
                          f"LIMIT {int(limit)}"), format, width)
    return 0


@app.command("sql")
def sql_cmd(query: Annotated[str, typer.Argument(help="SQL over the catalog's tables and views")],
            catalog: CatalogOpt = None, config: ConfigOpt = None,
            format: FormatOpt = OutputFormat.table, width: WidthOpt = 80) -> int:
    """Ad-hoc SQL on the catalog (views included)."""
    import duckdb

    cat = open_catalog(ns(catalog=catalog, config=config))
    try:
        table = cat.query(query, read_only=True)
    except duckdb.Error as e:
        raise SystemExit(f"SQL error: {e}") from None
    if table.num_columns == 0:
        raise SystemExit("SQL error: nothing to show: no statement in the SQL returns rows (an empty query, "
                         "only ';' or a comment); write a SELECT, e.g. \"SELECT name, version FROM datasets\"")
    print_table(table, format, width)
    return 0


@app.command("serve")
def serve_cmd(config: ConfigReq,
              cron: Annotated[str, typer.Option("--cron", help="refresh schedule")] = "0 3 * * *",
              timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone of the schedule")] = "UTC",
              name: Annotated[Optional[str], typer.Option("--name", help="deployment name "
                                                          "(default: refresh-<config name>)")] = None) -> int:
    """Register the build as a scheduled Prefect deployment and serve it."""
    from schemas.config import check_buildable, load_config

    check_buildable(load_config(config))
    from flows.deployments import serve

    serve(config, cron=cron, name=name, timezone=timezone)
    return 0


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def _user_error(e: BaseException) -> str | None:
    """The message of an error the user resolves (a state of the catalog, a missing input), else None."""
    from schemas.config import ConfigError
    from tasks.runtime.catalog import CatalogBusy, CatalogError
    from tasks.runtime.publish import OldCatalog
    from tasks.runtime.ray_session import ResourceUnavailable

    if isinstance(e, (ConfigError, OldCatalog, CatalogBusy, CatalogError, ResourceUnavailable, FileNotFoundError)):
        return str(e)
    if isinstance(e, LookupError) and not isinstance(e, KeyError):
        return str(e)
    from tasks.export.formats import ExportRefused

    if isinstance(e, ExportRefused):
        return str(e)
    return None


class _NoUserErrorTracebacks:
    """A logging filter for Prefect's run loggers: a task or flow that failed on an error the user
    fixes logs its one-line message, without the traceback (the CLI then prints the remedy)."""

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _user_error(exc) is not None:
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_tracebacks() -> None:
    import logging

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoUserErrorTracebacks) for f in logger.filters):
            logger.addFilter(_NoUserErrorTracebacks())


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (0 ok, 1 an error with its remedy, 2 usage or config)."""
    _env_defaults()
    _quiet_tracebacks()
    from schemas.config import ConfigError

    command = typer.main.get_command(app)
    try:
        rv = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="corpusforge",
                          standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except typer.TyperException as e:  # usage errors: a bad option, a missing argument
        e.show()
        return getattr(e, "exit_code", 2)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except Exception as e:
        msg = _user_error(e)
        if msg is None or os.environ.get("CORPUSFORGE_DEBUG"):
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return int(rv or 0)


if __name__ == "__main__":
    sys.exit(main())
