"""How every command prints: one table printer (rich), one csv and one json writer.

`--format` is the output format of every command that prints rows; `--width` caps a column (or a
line) in characters. Numbers are right-aligned, so a column of counts reads at a glance.
"""
from __future__ import annotations

import csv
import json
import sys

from flows.cli_choices import OutputFormat


def _rows_cols(table) -> tuple[list[dict], list[str]]:
    rows = table.to_pylist() if hasattr(table, "to_pylist") else list(table)
    cols = table.column_names if hasattr(table, "column_names") else (list(rows[0]) if rows else [])
    return rows, cols


def cell(v, width: int | None = None) -> str:
    """One value as text: floats to 4 decimals, newlines flattened, cut to `width` with an ellipsis."""
    if v is None:
        s = ""
    elif isinstance(v, float):
        s = f"{v:.4f}"
    else:
        s = str(v)
    from tasks.runtime.terminal import terminal_safe

    s = terminal_safe(s.replace("\n", " "))  # a document's escape sequences never reach the terminal
    return s if width is None or len(s) <= width else s[: max(width - 1, 1)] + "…"


def _numeric(rows: list[dict], col: str) -> bool:
    vals = [r[col] for r in rows if r[col] is not None]
    return bool(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)


def print_table(table, fmt: OutputFormat | str = "table", width: int = 60, title: str | None = None) -> None:
    """Rows (an Arrow table or a list of dicts) in the chosen output format on stdout."""
    fmt = OutputFormat(fmt)
    rows, cols = _rows_cols(table)
    if fmt is OutputFormat.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if fmt is OutputFormat.csv:
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        for r in rows:
            w.writerow([cell(r[c]) for c in cols])
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text  # plain text: a document's "[...]" is never read as rich markup

    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False)
    for c in cols:
        t.add_column(Text(cell(c)), justify="right" if _numeric(rows, c) else "left", no_wrap=True, overflow="ellipsis")
    for r in rows:
        t.add_row(*(Text(cell(r[c], width)) for c in cols))
    console().print(t)
    print(f"({len(rows)} rows)")


def console():
    """A rich console on the current stdout; wide when it is not a terminal, so tables never wrap."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if tty else 10_000, highlight=False, soft_wrap=not tty)


def print_build_summary(result: dict, invocation: str = "corpusforge") -> None:
    print()
    print(f"corpusforge build {result['run_id']}: completed")
    if result.get("note"):
        print(result["note"])
    print_table([{k: s[k] for k in ("stage", "rows_in", "rows_out", "rows_quarantined", "rows_deduplicated",
                                    "model_calls", "cache_hits")} | {"seconds": round(s["seconds"], 2)}
                 for s in result["stages"]], title="Stages")
    print_table([{"dataset": name, "version": d["version"], "rows": d["rows"]}
                 for name, d in sorted(result["datasets"].items())], title="Datasets (current versions)")
    print()
    print("Quarantined this run, by reason:")
    if not result["quarantine"]:
        print("  none")
    for q in result["quarantine"]:
        code = f" {q['code']}" if q.get("code") else ""
        print(f"  {q['n']:>4}  [{q['stage']}]{code} {q['reason']}")
    print()
    print(f"Catalog:   {result['catalog']}")
    print(f"Data root: {result['data_root']}")
    print()
    print("Look at it with SQL:")
    cat = result["catalog"]
    print(f"  {invocation} sql --catalog {cat} \"SELECT name, version, row_count, created_at FROM datasets WHERE is_current\"")
    print(f"  {invocation} sql --catalog {cat} \"SELECT modality, count(*) AS n, any_value(text) AS example FROM documents GROUP BY ALL\"")


def error_text(e: BaseException) -> str:
    """An error's own message: `str(KeyError(msg))` is `repr(msg)`, quotes and escapes included."""
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]
    return str(e)
