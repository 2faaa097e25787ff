"""Names that reach SQL: validated, and always quoted.

Dataset names come from the code and from config (a tree name, a judge label-set name), so a
view name is derived and checked here, and every identifier and literal that enters a SQL
string goes through `quote_ident` / `quote_literal`.
"""
from __future__ import annotations

import re

_SAFE_VIEW = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def quote_ident(name: str) -> str:
    if "\x00" in name:
        raise ValueError("an SQL identifier cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("an SQL literal cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"


def view_name(dataset: str) -> str:
    """SQL view of a dataset's current version: `embeddings/text` -> `embeddings_text`.

    Anything but letters, digits and underscores becomes `_`, so the name is a plain identifier
    whatever the dataset name holds; it is quoted where it is used all the same."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", dataset)
    if not name or name[0].isdigit():
        name = "_" + name
    if not _SAFE_VIEW.match(name):
        raise ValueError(f"dataset name {dataset!r} cannot become an SQL view name")
    return name


_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_dataset_name(name: str) -> str:
    """A dataset name as the write path accepts it: '/'-separated simple segments (no '..', no
    quotes, no whitespace), since it becomes a path under the data root and an SQL view name."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or len(name) > 256 or not all(_SEGMENT.match(p) and ".." not in p for p in parts):
        raise ValueError(f"{name!r} is not a valid dataset name: use '/'-separated parts of letters, digits, "
                         "'.', '_' or '-', each starting with a letter or digit")
    return name
