"""The in-memory semantic tree, its Arrow form and its invariants.

Nodes live in parallel lists indexed by position (root = 0); a deleted node is marked dead and
dropped when the tree is written out, so insert and delete never renumber. Every node has a
vector: a leaf carries its document's embedding, an internal node the embedding of its summary
(or the centroid of its children, when the build says so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from schemas.tables import TREE_NODES, embeddings_schema
from tasks.runtime.ids import record_id, text_sha256

ROOT = 0


@dataclass
class Tree:
    tree_id: str
    space: str  # embedding space of the leaf vectors
    summarizer: str
    max_branching: int
    dim: int
    node_id: list[str] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    children: list[list[int]] = field(default_factory=list)
    doc_id: list[str | None] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # summary of an internal node, passage of a leaf
    alive: list[bool] = field(default_factory=list)
    _count: list[int] = field(default_factory=list)  # documents under each node, kept on every change
    _vectors: np.ndarray | None = None
    _leaf_of: dict[str, int] = field(default_factory=dict)
    _depth_cache: list[int] | None = None

    # ---- construction ------------------------------------------------------------------------
    def add_node(self, node_id: str, parent: int, vector: np.ndarray, *, doc_id: str | None = None,
                 text: str = "") -> int:
        i = len(self.node_id)
        self.node_id.append(node_id)
        self.parent.append(parent)
        self.children.append([])
        self.doc_id.append(doc_id)
        self.text.append(text)
        self.alive.append(True)
        self._count.append(1 if doc_id is not None else 0)
        self._ensure_capacity(i + 1)
        self._vectors[i] = vector
        if parent >= 0:
            self.children[parent].append(i)
            self._add_count(parent, self._count[i])
        if doc_id is not None:
            self._leaf_of[doc_id] = i
        self._depth_cache = None
        return i

    def _ensure_capacity(self, n: int) -> None:
        if self._vectors is None:
            self._vectors = np.zeros((max(n, 16), self.dim), np.float32)
        elif n > len(self._vectors):
            grown = np.zeros((max(n, 2 * len(self._vectors)), self.dim), np.float32)
            grown[: len(self._vectors)] = self._vectors
            self._vectors = grown

    def _add_count(self, node: int, n: int) -> None:
        while node >= 0 and n:
            self._count[node] += n
            node = self.parent[node]

    def set_parent(self, node: int, new_parent: int) -> None:
        old = self.parent[node]
        if old >= 0:
            self.children[old].remove(node)
            self._add_count(old, -self._count[node])
        self.parent[node] = new_parent
        self.children[new_parent].append(node)
        self._add_count(new_parent, self._count[node])
        self._depth_cache = None

    def kill(self, node: int) -> None:
        """Remove a node with no children from the tree."""
        if self.children[node]:
            raise ValueError(f"node {self.node_id[node]} still has children")
        p = self.parent[node]
        if p >= 0:
            self.children[p].remove(node)
            self._add_count(p, -self._count[node])
        self.alive[node] = False
        if self.doc_id[node] is not None:
            self._leaf_of.pop(self.doc_id[node], None)
        self._depth_cache = None

    # ---- reading -----------------------------------------------------------------------------
    @property
    def vectors(self) -> np.ndarray:
        return self._vectors[: len(self.node_id)]

    def is_leaf(self, node: int) -> bool:
        return self.doc_id[node] is not None

    def leaf_of(self, doc_id: str) -> int | None:
        return self._leaf_of.get(doc_id)

    @property
    def doc_ids(self) -> list[str]:
        return list(self._leaf_of)

    @property
    def n_docs(self) -> int:
        return len(self._leaf_of)

    def depths(self) -> list[int]:
        if self._depth_cache is None:
            depth = [-1] * len(self.node_id)
            depth[ROOT] = 0
            stack = [ROOT]
            while stack:
                v = stack.pop()
                for c in self.children[v]:
                    depth[c] = depth[v] + 1
                    stack.append(c)
            self._depth_cache = depth
        return self._depth_cache

    def ancestors(self, node: int) -> list[int]:
        """Parent first, root last."""
        out = []
        p = self.parent[node]
        while p >= 0:
            out.append(p)
            p = self.parent[p]
        return out

    def n_leaves(self) -> np.ndarray:
        """Documents under each node (a dead node keeps its last count)."""
        return np.array(self._count, np.int64)

    def leaves_under(self, node: int) -> list[int]:
        out, stack = [], [node]
        while stack:
            v = stack.pop()
            if self.is_leaf(v):
                out.append(v)
            stack.extend(self.children[v])
        return out

    def height(self) -> int:
        d = self.depths()
        return max((d[i] for i in self._leaf_of.values()), default=0)

    def live_nodes(self) -> list[int]:
        """Alive nodes in breadth-first order from the root."""
        order, frontier = [], [ROOT]
        while frontier:
            order.extend(frontier)
            frontier = [c for v in frontier for c in self.children[v]]
        return order

    # ---- Arrow -------------------------------------------------------------------------------
    def to_tables(self, vector_kind: str = "summary") -> tuple[pa.Table, pa.Table]:
        """(tree_nodes rows, node vectors as an embeddings table of internal nodes)."""
        nodes = self.live_nodes()
        depth, counts = self.depths(), self.n_leaves()
        rows = {
            "tree_id": [self.tree_id] * len(nodes),
            "node_id": [self.node_id[v] for v in nodes],
            "parent_id": [self.node_id[self.parent[v]] if self.parent[v] >= 0 else None for v in nodes],
            "depth": [depth[v] for v in nodes],
            "is_leaf": [self.is_leaf(v) for v in nodes],
            "doc_id": [self.doc_id[v] for v in nodes],
            "position": [self.children[self.parent[v]].index(v) if self.parent[v] >= 0 else 0 for v in nodes],
            "n_leaves": [int(counts[v]) for v in nodes],
            "summary": [self.text[v] for v in nodes],
            "summarizer": [None if self.is_leaf(v) else self.summarizer for v in nodes],
            "space": [self.space] * len(nodes),
        }
        table = pa.Table.from_pydict(rows, schema=TREE_NODES)
        internal = [v for v in nodes if not self.is_leaf(v)]
        vecs = np.ascontiguousarray(self.vectors[internal], np.float32)
        space = self.space if vector_kind == "summary" else f"{self.space}+{vector_kind}"
        vtable = pa.table({
            "item_id": [self.node_id[v] for v in internal],
            "item_kind": ["summary"] * len(internal),
            "doc_id": pa.nulls(len(internal), pa.string()),
            "content_sha256": [text_sha256(self.text[v]) for v in internal],
            "space": [space] * len(internal),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), self.dim),
        }, schema=embeddings_schema(self.dim))
        return table, vtable

    @classmethod
    def from_tables(cls, nodes: pa.Table, node_vectors: pa.Table, doc_vectors: dict[str, np.ndarray] | None,
                    max_branching: int) -> "Tree":
        """Rebuild the tree from its rows, the internal node vectors and the documents' vectors."""
        rows = nodes.sort_by([("depth", "ascending"), ("position", "ascending")]).to_pylist()
        if not rows:
            raise ValueError("tree has no nodes")
        vec_of = dict(zip(node_vectors["item_id"].to_pylist(),
                          np.asarray(node_vectors["vector"].to_pylist(), np.float32)))
        dim = len(next(iter(vec_of.values()))) if vec_of else len(next(iter((doc_vectors or {}).values())))
        first = rows[0]
        tree = cls(first["tree_id"], first["space"] or "", next((r["summarizer"] for r in rows if r["summarizer"]), ""),
                   max_branching, dim)
        index: dict[str, int] = {}
        for r in rows:
            if r["is_leaf"]:
                vec = (doc_vectors or {}).get(r["doc_id"])
                if vec is None:
                    raise KeyError(f"no vector for leaf document {r['doc_id']} in the tree's embedding space")
            else:
                vec = vec_of.get(r["node_id"])
                if vec is None:
                    raise KeyError(f"no vector for tree node {r['node_id']}")
            parent = index[r["parent_id"]] if r["parent_id"] is not None else -1
            index[r["node_id"]] = tree.add_node(r["node_id"], parent, vec, doc_id=r["doc_id"] if r["is_leaf"] else None,
                                                text=r["summary"] or "")
        return tree


def leaf_node_id(tree_id: str, doc_id: str) -> str:
    return record_id("tree-leaf", tree_id, doc_id)


def internal_node_id(tree_id: str, *parts) -> str:
    return record_id("tree-node", tree_id, *parts)


def check_invariants(tree: Tree, doc_ids: list[str] | None = None) -> list[str]:
    """Problems with the tree, empty when it is well formed."""
    problems = []
    nodes = tree.live_nodes()
    seen_docs: dict[str, int] = {}
    for v in nodes:
        kids = tree.children[v]
        if tree.is_leaf(v):
            if kids:
                problems.append(f"leaf {tree.node_id[v]} has children")
            seen_docs[tree.doc_id[v]] = seen_docs.get(tree.doc_id[v], 0) + 1
            continue
        if len(kids) > tree.max_branching:
            problems.append(f"node {tree.node_id[v]} has {len(kids)} children > M={tree.max_branching}")
        if not kids and not (v == ROOT and tree.n_docs == 0):
            problems.append(f"internal node {tree.node_id[v]} is empty")
        if not tree.text[v].strip():
            problems.append(f"internal node {tree.node_id[v]} has an empty summary")
    dup = [d for d, n in seen_docs.items() if n > 1]
    if dup:
        problems.append(f"{len(dup)} documents appear in more than one leaf, e.g. {dup[0]}")
    if doc_ids is not None:
        missing = set(doc_ids) - set(seen_docs)
        extra = set(seen_docs) - set(doc_ids)
        if missing:
            problems.append(f"{len(missing)} documents have no leaf, e.g. {sorted(missing)[0]}")
        if extra:
            problems.append(f"{len(extra)} leaves name documents not in the corpus, e.g. {sorted(extra)[0]}")
    ids = [tree.node_id[v] for v in nodes]
    if len(set(ids)) != len(ids):
        problems.append("node ids are not unique")
    return problems


def expected_depth(n_docs: int, max_branching: int) -> int:
    """Depth of a complete M-ary tree over n leaves: ceil(log_M n)."""
    return max(1, math.ceil(math.log(max(n_docs, 2)) / math.log(max_branching) - 1e-9))
