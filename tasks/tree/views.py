"""The `tree_nodes` SQL view: the default tree's nodes, under the table's own name.

Each tree NAME is the dataset `tree_nodes/NAME` with its own view (`tree_nodes_default`, ...);
analysts expect `SELECT * FROM tree_nodes` to work as it does for `documents` or `judgments`.
The view follows the tree named `default` (the config's default name), or the only tree when
there is exactly one, and is re-pointed after every publish of a tree.
"""
from __future__ import annotations

from tasks.runtime.catalog import register_collection
from tasks.runtime.sql import quote_ident, view_name

PREFIX = "tree_nodes/"
DEFAULT = "default"


def default_tree(names: list[str]) -> str | None:
    trees = sorted(n[len(PREFIX):] for n in names if n.startswith(PREFIX))
    if DEFAULT in trees:
        return DEFAULT
    return trees[0] if len(trees) == 1 else None


def sync_tree_nodes_view(catalog, root) -> str | None:
    """Point `tree_nodes` at the default tree's view; returns the tree it names (None: no view)."""
    name = default_tree(list(catalog.current_all()))
    if name is None or not root.is_local:  # per-dataset views exist for local data roots only
        return None
    with catalog.connect() as con:
        con.execute(f"CREATE OR REPLACE VIEW tree_nodes AS SELECT * FROM {quote_ident(view_name(PREFIX + name))}")
    return name


register_collection(PREFIX, sync_tree_nodes_view)
