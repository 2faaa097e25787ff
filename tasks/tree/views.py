"""The `tree_nodes` SQL view: the default tree's nodes, under the table's own name.

Each tree NAME is the dataset `tree_nodes/NAME` with its own view (`tree_nodes_default`, ...);
analysts expect `SELECT * FROM tree_nodes` to work as it does for `documents` or `judgments`.
The view follows the tree named `default` (the config's default name), or the only tree when
there is exactly one, and is resolved on every query, like the other dataset views.
"""
from __future__ import annotations

from tasks.runtime.catalog import register_alias

PREFIX = "tree_nodes/"
DEFAULT = "default"


def default_tree(names: list[str]) -> str | None:
    trees = sorted(n[len(PREFIX):] for n in names if n.startswith(PREFIX))
    if DEFAULT in trees:
        return DEFAULT
    return trees[0] if len(trees) == 1 else None


def default_tree_dataset(names: list[str]) -> str | None:
    """The dataset the `tree_nodes` view shows: the default tree's nodes (None: no such tree)."""
    name = default_tree(names)
    return PREFIX + name if name is not None else None


register_alias("tree_nodes", default_tree_dataset)
