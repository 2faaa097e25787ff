"""The search stage: LATTICE tree search over a query set, published as a run.

The ranking of each query becomes rows of `candidates/tree-NAME` (query_id, doc_id, rank, score,
retriever) with lineage to the tree it searched, so the judge and negatives stages can use it
like any other retriever's run. Each query is a unit and its search is the work, so a query the
scorer fails on is quarantined and the others go on; a query already searched in the same tree
with the same parameters is not searched again.
"""
from __future__ import annotations

import pyarrow as pa

from schemas.config import TreeConfig
from schemas.tables import CANDIDATES
from tasks.runtime.ids import cache_key, record_id
from tasks.runtime.stage import KEY, UNIT, Assembled, Read, Resources, Stage, Units, Work, optional

OUTPUTS = pa.schema([("doc_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float32())),
                     ("scorer_calls", pa.int64()), ("failed_slates", pa.int64()), ("top_path", pa.string()),
                     ("scorer", pa.string())])


def candidates_dataset(tree: str) -> str:
    return f"candidates/tree-{tree}"


class Search(Stage):
    name = "search"
    section = "tree"
    reads = (optional("queries"),)
    description = "LATTICE tree search over a query set, as a run in candidates/tree-NAME"

    @property
    def tree(self) -> str:
        return self.params.get("tree") or self.cfg.name

    def inputs(self) -> tuple[Read, ...]:
        from tasks.tree.stage import nodes_dataset

        return (Read(nodes_dataset(self.tree)),) + (() if self.params.get("queries_file") else (Read("queries"),))

    def outputs(self) -> tuple[str, ...]:
        return (candidates_dataset(self.tree),)

    def search_settings(self) -> dict:
        s = self.cfg.search
        return {"beam": s.beam, "iterations": s.iterations, "calibration_leaves": s.calibration_leaves,
                "path_factor": s.path_factor, "seed": self.cfg.seed, "k": self.params.get("k") or s.k,
                "scorer": self.params.get("scorer") or s.scorer}

    def units(self, inputs) -> Units:
        from tasks.judge import trec_io
        from tasks.tree.stage import nodes_dataset

        rejected: list[dict] = []
        duplicates: list[str] = []
        if self.params.get("queries_file"):
            topics = trec_io.read_topics(self.params["queries_file"], stage=self.name)
            rejected = [{"key": r["key"], "reason": r["reason"], "payload": r["payload"]}
                        for r in topics.quarantine.rows]
            duplicates = [f"duplicate:{i}" for i in range(topics.duplicates)]
            qids, texts = topics.table["query_id"].to_pylist(), topics.table["text"].to_pylist()
        else:
            q = inputs["queries"]
            q = q.filter(pa.compute.fill_null(q["passed"], False))
            qids, texts = q["query_id"].to_pylist(), q["text"].to_pylist()
        wanted = set(self.params.get("qids") or [])
        if wanted:
            keep = [i for i, q in enumerate(qids) if q in wanted]
            qids, texts = [qids[i] for i in keep], [texts[i] for i in keep]
        tree_hash = inputs.ref(nodes_dataset(self.tree)).content_hash
        fp = self.work_fingerprint()
        keys = [cache_key(record_id(t, tree_hash), fp) for t in texts]
        return Units(pa.table({UNIT: pa.array(qids, pa.string()), KEY: pa.array(keys, pa.string()),
                               "text": pa.array(texts, pa.string())}), rejected, duplicates)

    def work_fingerprint(self) -> str:
        from tasks.runtime.ids import fingerprint

        llm = self.cfg.search.llm.model_dump(mode="json") if self.search_settings()["scorer"] == "llm" else None
        return fingerprint({"search": self.search_settings(), "llm": llm, "encoder": self.config.embed.text.model,
                            "tree": self.tree})

    def work(self) -> Work:
        args = {"catalog": self.config.catalog_path, "data_root": self.config.data_root_uri, "tree": self.tree,
                "tree_cfg": self.cfg.model_dump(mode="json"), "encoder": self.config.embed.text.model_dump(mode="json"),
                "settings": self.search_settings()}
        return Work(TreeSearchWork, args, ["text"], OUTPUTS, Resources(where="local", batch_size=8, uses_gpu=False))

    def payload(self, unit: dict) -> dict:
        return {"text": unit["text"]}

    def assemble(self, inputs, units: pa.Table, results: pa.Table | None) -> Assembled:
        got = {} if results is None else {r[KEY]: r for r in results.to_pylist()}
        rows, calls, failed, paths, scorer = [], 0, 0, [], None
        for u in units.to_pylist():
            r = got[u[KEY]]
            scorer = r["scorer"]
            calls += r["scorer_calls"]
            failed += r["failed_slates"]
            paths.append((u["text"], r["scorer_calls"], r["failed_slates"],
                          r["doc_ids"][0] if r["doc_ids"] else None, r["top_path"]))
            retriever = f"tree:{self.tree}:{r['scorer']}"
            rows += [{"query_id": u[UNIT], "doc_id": d, "rank": i + 1, "score": s, "retriever": retriever}
                     for i, (d, s) in enumerate(zip(r["doc_ids"], r["scores"]))]
        table = pa.Table.from_pylist(rows, schema=CANDIDATES)
        n = units.num_rows
        notes = {"queries": n, "scorer": scorer, "scorer_calls": calls, "calls_per_query": calls / max(n, 1),
                 "failed_slates": failed, "rows": table.num_rows, "examples": paths[:20]}
        return Assembled({candidates_dataset(self.tree): table}, units[UNIT].to_pylist(), notes=notes,
                         model_calls=0)

    def report(self, outcome) -> None:
        from prefect.artifacts import create_markdown_artifact
        from prefect.context import TaskRunContext

        from tasks.runtime.prefect_support import artifact_key, run_logger

        n = outcome.notes
        run_logger().info("search over tree %s: %d queries, %.1f scorer calls per query, %d failed slates",
                          self.tree, n.get("queries", 0), n.get("calls_per_query", 0.0), n.get("failed_slates", 0))
        if TaskRunContext.get() is None or "examples" not in n:
            return
        lines = [f"## Tree search over {self.tree}", "",
                 f"{n['queries']} queries, {n['calls_per_query']:.1f} scorer calls per query "
                 f"({n['scorer']}), {n['failed_slates']} failed slates", "",
                 "| query | calls | failed | top hit | its path |", "|---|---|---|---|---|"]
        for text, c, f, top, path in n["examples"]:
            lines.append(f"| {text[:60]} | {c} | {f} | {top or '-'} | {(path or '').replace('|', '/')} |")
        create_markdown_artifact(key=artifact_key(self.config.name, "tree-search"), markdown="\n".join(lines),
                                 description="Tree search over a query set")


class TreeSearchWork:
    """Loads the tree and its scorer once; searches batches of queries."""

    def __init__(self, args: dict, device: str = "cpu"):
        from schemas.config import TextEncoder
        from tasks.runtime.catalog import Catalog
        from tasks.runtime.storage import DataRoot
        from tasks.tree.search import SearchParams
        from tasks.tree.stage import load_tree

        cfg = TreeConfig.model_validate(args["tree_cfg"])
        s = args["settings"]
        root = DataRoot(args["data_root"])
        self.loaded = load_tree(Catalog(args["catalog"], root), root, args["tree"])
        self.params = SearchParams(s["beam"], s["iterations"], s["calibration_leaves"], s["path_factor"], s["seed"])
        self.k = s["k"]
        self.scorer = make_scorer(cfg, self.loaded.tree.space, [TextEncoder.model_validate(args["encoder"])],
                                  s["scorer"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tasks.tree.search import search

        out = {k: [] for k in [KEY] + OUTPUTS.names}
        for key, text in zip(batch[KEY].to_pylist(), batch["text"].to_pylist()):
            result = search(self.loaded.tree, text, self.scorer, self.params, k=self.k)
            top = result.hits[0] if result.hits else None
            for k, v in ((KEY, key), ("doc_ids", [h.doc_id for h in result.hits]),
                         ("scores", [h.score for h in result.hits]), ("scorer_calls", result.scorer_calls),
                         ("failed_slates", result.failed_slates),
                         ("top_path", " › ".join(s[:40] for _, s in top.path) if top else ""),
                         ("scorer", self.scorer.name)):
                out[k].append(v)
        return pa.table(out)


def make_scorer(cfg: TreeConfig, space: str, encoders: list, kind: str | None = None):
    from tasks.tree.scorers import EmbeddingScorer, LLMListwiseScorer
    from tasks.tree.stage import embedder_for

    kind = kind or cfg.search.scorer
    if kind == "llm":
        from tasks.backends.registry import build_generator

        if cfg.search.llm.backend == "offline":
            raise ValueError("the llm scorer needs tree.search.llm with backend hf or openai in --config")
        return LLMListwiseScorer(build_generator(cfg.search.llm), max_new_tokens=cfg.search.llm.max_new_tokens)
    return EmbeddingScorer(embedder_for(space, encoders).embed)
