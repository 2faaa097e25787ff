"""The tree stage: build the semantic tree after `embed`, or refresh it by insert and delete.

Outputs two datasets per tree NAME:
- `tree_nodes/NAME`: one row per node (leaves name their document), lineage to the documents
  and the embedding space it was built from;
- `embeddings/tree-NAME`: the vector of every internal node (item_kind `summary`).
Leaf vectors are not copied: they are the documents' vectors in `embeddings/text` (a document
without text takes the mean of its captions' vectors, when it has captions).

On refresh, a tree whose fingerprint (build parameters, summarizer, embedding space) is unchanged
takes the new documents by insert and drops the removed ones by delete, unless more than
`rebuild_fraction` of the corpus changed; anything else rebuilds.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import ModelBackend, TextEncoder, TreeConfig
from tasks.corpus import captions_by_doc, document_text
from tasks.runtime.accounting import Quarantine
from tasks.runtime.ids import fingerprint
from tasks.runtime.stage import KEY, UNIT, Assembled, Output, Read, Stage, Units, optional
import tasks.tree.views  # noqa: F401 - the `tree_nodes` view follows the default tree in every catalog
from tasks.tree import prompts
from tasks.tree.build import BuildParams, EmbedFn, leaf_text, build_bottom_up, build_top_down
from tasks.tree.insert import delete_documents, insert_documents
from tasks.tree.model import Tree, check_invariants
from tasks.tree.summarize import OFFLINE_NAME, ExtractiveSummarizer, LLMSummarizer, Summarizer, TermStats

log = logging.getLogger(__name__)

STAGE = "tree"
TEXT_EMBEDDINGS = "embeddings/text"


def nodes_dataset(name: str) -> str:
    return f"tree_nodes/{name}"


def vectors_dataset(name: str) -> str:
    return f"embeddings/tree-{name}"


def build_params(cfg: TreeConfig) -> BuildParams:
    return BuildParams(cfg.max_branching, cfg.node_vectors, cfg.leaf_chars, cfg.seed)


def summarizer_name(cfg: ModelBackend) -> str:
    from tasks.backends.registry import backend_name

    if cfg.backend == "offline":
        return OFFLINE_NAME
    versions = "+".join(prompts.version(p) for p in ("summary", "keywords", "topics", "title"))
    return f"{backend_name(cfg, OFFLINE_NAME)}#{versions}"


def tree_fingerprint(cfg: TreeConfig, space: str) -> str:
    """What decides the tree's shape and text: build parameters, summarizer and embedding space."""
    return fingerprint({"build": cfg.build, "M": cfg.max_branching, "group_by": cfg.group_by,
                        "node_vectors": cfg.node_vectors, "leaf_chars": cfg.leaf_chars, "seed": cfg.seed,
                        "summarizer": summarizer_name(cfg.summarizer),
                        "summarizer_params": cfg.summarizer.model_dump(include={"max_new_tokens", "temperature"}),
                        "space": space})


def make_summarizer(cfg: ModelBackend, texts: list[str], generator=None) -> Summarizer:
    """The offline extractive summarizer, or an LLM one (with the extractive one as fallback)."""
    fallback = ExtractiveSummarizer(TermStats.of(texts))
    if cfg.backend == "offline":
        return fallback
    if generator is None:
        from tasks.backends.registry import build_generator

        generator = build_generator(cfg)
    return LLMSummarizer(generator, fallback, max_new_tokens=cfg.max_new_tokens)


# ---- inputs ----------------------------------------------------------------------------------
@dataclass
class LeafInputs:
    doc_ids: list[str]
    texts: list[str]
    vectors: np.ndarray
    groups: list[str | None]
    space: str
    quarantine: Quarantine


def leaf_inputs(documents: pa.Table, embeddings: pa.Table, captions: pa.Table | None = None) -> LeafInputs:
    """Each document's leaf text and vector: its text embedding, else its captions' mean vector."""
    q = Quarantine(STAGE)
    spaces = pc.unique(embeddings["space"]).to_pylist() if embeddings.num_rows else []
    if len(spaces) > 1:
        raise ValueError(f"{TEXT_EMBEDDINGS} mixes embedding spaces {spaces}; a tree needs one space")
    space = spaces[0] if spaces else ""
    kinds = embeddings["item_kind"].to_pylist()
    item_ids = embeddings["item_id"].to_pylist()
    emb_docs = embeddings["doc_id"].to_pylist()
    vecs = _matrix(embeddings)
    doc_vec: dict[str, int] = {}
    cap_vecs: dict[str, list[int]] = {}
    for i, (kind, item, doc) in enumerate(zip(kinds, item_ids, emb_docs)):
        if kind == "document":
            doc_vec[item] = i
        elif kind == "caption" and doc is not None:
            cap_vecs.setdefault(doc, []).append(i)
    cap_text = captions_by_doc(captions)
    ids, texts, rows, groups = [], [], [], []
    for d, text, source_id in zip(documents["doc_id"].to_pylist(), documents["text"].to_pylist(),
                                  documents["source_id"].to_pylist()):
        if d in doc_vec and text and text.strip():
            vec, text_of_leaf = vecs[doc_vec[d]], document_text(text, cap_text.get(d))
        elif d in cap_vecs and d in cap_text:
            vec, text_of_leaf = vecs[cap_vecs[d]].mean(0), document_text(None, cap_text[d])
        else:
            q.add(d, "no text vector: the document has no embedded text and no embedded caption, "
                     "so it cannot be placed in the tree", {"doc_id": d})
            continue
        ids.append(d)
        texts.append(text_of_leaf)
        rows.append(vec)
        groups.append(source_id)
    dim = vecs.shape[1] if vecs.ndim == 2 else 0
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return LeafInputs(ids, texts, matrix, groups, space, q)


def _matrix(embeddings: pa.Table) -> np.ndarray:
    col = embeddings["vector"].combine_chunks()
    if embeddings.num_rows == 0:
        return np.zeros((0, 0), np.float32)
    dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else len(col[0])
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)


def leaf_vectors(documents: pa.Table, embeddings: pa.Table, captions: pa.Table | None = None) -> dict[str, np.ndarray]:
    inputs = leaf_inputs(documents, embeddings, captions)
    return dict(zip(inputs.doc_ids, inputs.vectors))


# ---- build or refresh ------------------------------------------------------------------------
@dataclass
class Previous:
    nodes: pa.Table
    node_vectors: pa.Table
    fingerprint: str | None


def build_tree(cfg: TreeConfig, inputs: LeafInputs, summarizer: Summarizer, embed: EmbedFn | None) -> Tree:
    params = build_params(cfg)
    if cfg.build == "top_down":
        return build_top_down(cfg.name, inputs.doc_ids, inputs.texts, inputs.vectors, summarizer, embed,
                              params, inputs.space)
    groups = inputs.groups if cfg.group_by == "source_id" else None
    return build_bottom_up(cfg.name, inputs.doc_ids, inputs.texts, inputs.vectors, summarizer, embed, params,
                           inputs.space, groups)


@dataclass
class Built:
    nodes: pa.Table
    node_vectors: pa.Table
    notes: dict
    model_calls: int
    carried: int  # leaves carried over from the previous tree


def build_or_refresh(cfg: TreeConfig, inputs: LeafInputs, previous: Previous | None = None,
                     embed: EmbedFn | None = None, generator=None) -> Built:
    """Build the tree, or refresh the previous one by insert and delete when its fingerprint matches."""
    started = time.perf_counter()
    fp = tree_fingerprint(cfg, inputs.space)
    embed_fn = embed if cfg.node_vectors in ("summary", "both") else None
    notes: dict = {"fingerprint": fp, "space": inputs.space}
    tree = report = None
    if previous is not None and previous.fingerprint == fp:
        tree, report, summarizer = _refresh(cfg, inputs, previous, embed_fn, generator)
    if tree is None:
        summarizer = make_summarizer(cfg.summarizer, [leaf_text(t, cfg.leaf_chars) for t in inputs.texts],
                                     generator)
        tree = build_tree(cfg, inputs, summarizer, embed_fn)
        notes["mode"] = "build"
    else:
        notes |= {"mode": "incremental", "inserted": report.inserted, "deleted": report.deleted,
                  "touched": report.touched, "splits": report.splits, "pruned": report.pruned}
    problems = check_invariants(tree, inputs.doc_ids)
    if problems:
        raise AssertionError(f"tree '{cfg.name}' is malformed: " + "; ".join(problems[:5]))
    nodes, node_vectors = tree.to_tables(cfg.node_vectors)
    embedded = (report.touched if report else _internal(nodes)) if embed_fn else 0
    notes |= {"nodes": nodes.num_rows, "height": tree.height(), "summarizer": tree.summarizer,
              "summarizer_failures": summarizer.stats["failures"], "seconds": round(time.perf_counter() - started, 3)}
    return Built(nodes, node_vectors, notes, summarizer.stats["calls"] + embedded,
                 (len(inputs.doc_ids) - report.inserted) if report else 0)


def _internal(nodes: pa.Table) -> int:
    return int(pc.sum(pc.invert(nodes["is_leaf"])).as_py() or 0)


def _refresh(cfg: TreeConfig, inputs: LeafInputs, previous: Previous, embed: EmbedFn | None, generator):
    """Delete the removed documents and insert the new ones into the previous tree."""
    old_docs = set(pc.drop_null(previous.nodes["doc_id"]).to_pylist())
    current = dict(zip(inputs.doc_ids, range(len(inputs.doc_ids))))
    added = [i for i, d in enumerate(inputs.doc_ids) if d not in old_docs]
    removed = sorted(old_docs - current.keys())
    changed = len(added) + len(removed)
    if changed > cfg.rebuild_fraction * max(len(current), 1):
        log.info("tree %s: %d of %d documents changed, above rebuild_fraction=%.2f; rebuilding",
                 cfg.name, changed, len(current), cfg.rebuild_fraction)
        return None, None, None
    zero = np.zeros(inputs.vectors.shape[1], np.float32)
    vectors = {d: (inputs.vectors[current[d]] if d in current else zero) for d in old_docs}
    try:
        tree = Tree.from_tables(previous.nodes, previous.node_vectors, vectors, cfg.max_branching)
    except (KeyError, ValueError) as e:
        log.warning("tree %s: cannot load the previous tree (%s); rebuilding", cfg.name, e)
        return None, None, None
    summarizer = make_summarizer(cfg.summarizer, [tree.text[tree.leaf_of(d)] for d in old_docs], generator)
    params = build_params(cfg)
    report = delete_documents(tree, removed, summarizer, embed, params)
    ins = insert_documents(tree, [inputs.doc_ids[i] for i in added], [inputs.texts[i] for i in added],
                           inputs.vectors[added] if added else np.zeros((0, inputs.vectors.shape[1]), np.float32),
                           summarizer, embed, params)
    report.inserted, report.splits, report.touched = ins.inserted, report.splits + ins.splits, report.touched + ins.touched
    return tree, report, summarizer


# ---- reading a published tree ------------------------------------------------------------------
@dataclass
class LoadedTree:
    tree: Tree
    nodes: object  # DatasetVersion of tree_nodes/NAME
    parents: list  # the DatasetVersions it was built from


def available_trees(catalog) -> list[str]:
    rows = catalog.query("SELECT name FROM datasets WHERE is_current AND name LIKE 'tree_nodes/%' ORDER BY name")
    return [n.split("/", 1)[1] for n in rows["name"].to_pylist()]


def load_tree(catalog, root, name: str) -> LoadedTree:
    """The current tree NAME with its leaf vectors read from the exact versions it was built from."""
    from tasks.runtime.publish import read

    ds = catalog.current(nodes_dataset(name))
    if ds is None:
        known = available_trees(catalog)
        raise KeyError(f"no tree named '{name}' in catalog {catalog.path}; "
                       + (f"available: {', '.join(known)}" if known else "build one with the tree stage first"))
    lineage = catalog.lineage(ds.name, ds.version).to_pylist()
    parents = {r["parent_name"]: r["parent_version"] for r in lineage if r["depth"] == 1}
    missing = [p for p in ("documents", TEXT_EMBEDDINGS) if p not in parents]
    if missing:
        raise KeyError(f"tree '{name}' ({ds.ref}) has no lineage to {missing}; rebuild it with the tree stage")
    documents = read(catalog, root, "documents", parents["documents"])
    embeddings = read(catalog, root, TEXT_EMBEDDINGS, parents[TEXT_EMBEDDINGS])
    captions = read(catalog, root, "captions", parents["captions"]) if "captions" in parents else None
    nodes = read(catalog, root, ds.name, ds.version)
    node_vectors = read(catalog, root, vectors_dataset(name))
    counts = pc.value_counts(pc.drop_null(nodes["parent_id"]))
    widest = max((c["counts"].as_py() for c in counts), default=1)
    tree = Tree.from_tables(nodes, node_vectors, leaf_vectors(documents, embeddings, captions), widest)
    return LoadedTree(tree, ds, [catalog.version(n, v) for n, v in parents.items()])


def embedder_for(space: str, encoders: list[TextEncoder]):
    """The in-process text encoder whose space is `space` (summary vectors and queries share it)."""
    from tasks.backends.embedders import local_text_embedder, text_space

    base = space.removesuffix("+centroid").removesuffix("+both")
    for enc in encoders + [TextEncoder()]:
        if text_space(enc) == base:
            return local_text_embedder(enc.model_dump_json())
    raise ValueError(f"the tree was built in embedding space '{space}', which none of the configured text "
                     "encoders produce; pass the --config the tree was built with")


def outline(nodes: pa.Table, n_docs: int, height: int, limit: int = 12) -> str:
    """The root's summary and its children's, as markdown (the Prefect artifact)."""
    rows = nodes.filter(pc.less_equal(nodes["depth"], 1)).sort_by([("depth", "ascending"),
                                                                  ("position", "ascending")]).to_pylist()
    root = next((r for r in rows if r["depth"] == 0), {"summary": ""})
    lines = [f"## Tree `{root.get('tree_id', '')}`: {n_docs} documents, height {height}", "",
             f"Root: {(root['summary'] or '')[:200]}", ""]
    lines += [f"- {(r['summary'] or '')[:160]}" for r in rows if r["depth"] == 1][:limit]
    return "\n".join(lines)


# ---- the stage ---------------------------------------------------------------------------------
class TreeStage(Stage):
    name = STAGE
    section = "tree"
    runs_as_task = True
    reads = (Read("documents"), Read(TEXT_EMBEDDINGS), optional("captions"))
    writes = ("tree_nodes/{name}", "embeddings/tree-{name}")
    incremental = True
    description = "LATTICE semantic tree over the text embeddings, refreshed by insert and delete"

    def task(self):
        """A large tree builds in a Ray task of its own, unless its summaries come from an HTTP model
        (the key stays in this process, never in a worker) or from a generator handed in."""
        if self.cfg.summarizer.backend == "openai" or self.params.get("generator") is not None:
            return None
        return super().task()

    def task_size(self, inputs, units: pa.Table) -> int:
        return units.num_rows

    def units(self, inputs) -> Units:
        d = inputs["documents"]["doc_id"]
        return Units(pa.table({UNIT: d, KEY: d}))

    def assemble(self, inputs, units: pa.Table, results) -> Assembled:
        cfg = self.cfg
        emb = inputs[TEXT_EMBEDDINGS]
        leaves = leaf_inputs(inputs["documents"], emb, inputs.get("captions"))
        quarantined = [{"key": r["key"], "reason": r["reason"], "payload": r["payload"]} for r in leaves.quarantine.rows]
        if not leaves.doc_ids:
            return Assembled({}, [], quarantined, notes={"mode": "skipped", "reason": "no document has a text vector"})
        embed = None
        if cfg.node_vectors in ("summary", "both") and emb.num_rows:
            embed = embedder_for(emb["space"][0].as_py(), [self.config.embed.text]).embed
        prev_nodes, prev_vecs = inputs.previous(nodes_dataset(cfg.name)), inputs.previous(vectors_dataset(cfg.name))
        previous = None
        if prev_nodes is not None and prev_vecs is not None:
            previous = Previous(prev_nodes, prev_vecs, _fingerprint_of(inputs, nodes_dataset(cfg.name)))
        built = build_or_refresh(cfg, leaves, previous, embed, self.params.get("generator"))
        meta = {"tree_fingerprint": built.notes["fingerprint"]}
        built.notes["outline"] = outline(built.nodes, len(leaves.doc_ids), built.notes["height"])  # for the report
        return Assembled({nodes_dataset(cfg.name): Output(built.nodes, meta=meta),
                          vectors_dataset(cfg.name): built.node_vectors},
                         leaves.doc_ids, quarantined, model_calls=built.model_calls, cache_hits=built.carried,
                         notes=built.notes)

    def report(self, outcome) -> None:
        from tasks.runtime.prefect_support import run_logger

        n, logger = outcome.notes, run_logger()
        if n.get("mode") == "skipped":
            logger.info("tree %s: skipped (%s)", self.cfg.name, n["reason"])
            return
        logger.info("tree %s: %s, %d documents, %d nodes, height %d, %d summarizer failures%s", self.cfg.name,
                    n["mode"], outcome.rows_out, n["nodes"], n["height"], n["summarizer_failures"],
                    f", {n['inserted']} inserted, {n['deleted']} deleted, {n['touched']} nodes re-summarized"
                    if n["mode"] == "incremental" else "")
        if _in_prefect_run() and n.get("outline"):
            from prefect.artifacts import create_markdown_artifact

            from tasks.runtime.prefect_support import artifact_key

            create_markdown_artifact(key=artifact_key(self.config.name, f"tree-{self.cfg.name}"), markdown=n["outline"],
                                     description=f"Top of tree {self.cfg.name}")


def _fingerprint_of(inputs, name: str) -> str | None:
    """The tree fingerprint the previous version was built with (its notes, kept as meta)."""
    ref = inputs.previous_ref(name)
    return inputs.meta(ref).get("tree_fingerprint") if ref is not None else None


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None
