"""The tree stage against a real catalog, its incremental refresh, the search flow and the CLI."""
from __future__ import annotations

import pytest

from schemas.config import config_from_dict
from tasks.runtime.publish import read
from tasks.tree.model import check_invariants
from tasks.tree.stage import TreeStage, load_tree
from tests.stages import run_one, run_pure
from tests.test_negatives import Ctx
from tests.test_tree_data import corpus_tables, hex_id, llmjudge_slice

N = 200


@pytest.fixture(scope="module")
def store(tmp_path_factory, minilm):
    """A catalog holding the LLMJudge slice's first N passages and their MiniLM vectors."""
    work = tmp_path_factory.mktemp("tree-stage")
    cfg = config_from_dict({"name": "treetest", "corpus": {"root": str(work), "sources": [{"kind": "manifest", "path": "x"}]},
                            "workdir": str(work), "tree": {"max_branching": 8}})
    ctx = Ctx(cfg)
    ids, texts, vecs, queries, qrels = llmjudge_slice()
    return ctx, (ids, texts, vecs, minilm.name), queries


def _publish_corpus(ctx, ids, texts, vecs, space):
    docs, emb = corpus_tables(ids, texts, vecs, space)
    d = ctx.put("documents", docs)
    e = ctx.put("embeddings/text", emb, [d])
    return d, e


def _run_stage(ctx, d, e):
    refs, _ = run_one(ctx.config, TreeStage(ctx.config))
    row = ctx.catalog.query("SELECT * FROM stage_runs WHERE stage = 'tree' ORDER BY started_at DESC LIMIT 1"
                            ).to_pylist()[0]
    return refs, row


def test_stage_builds_publishes_and_refreshes_incrementally(store):
    ctx, (ids, texts, vecs, space), _ = store
    d, e = _publish_corpus(ctx, ids[:N], texts[:N], vecs[:N], space)
    refs, row = _run_stage(ctx, d, e)
    nodes_ref = refs["tree_nodes/default"]
    assert row["status"] == "completed" and row["rows_in"] == row["rows_out"] == N
    lineage = {(r["parent_name"], r["parent_version"]) for r in ctx.catalog.lineage(nodes_ref.name).to_pylist()}
    assert ("documents", d.version) in lineage and ("embeddings/text", e.version) in lineage
    nodes = read(ctx.catalog, ctx.root, "tree_nodes/default")
    assert set(nodes["space"].to_pylist()) == {space}
    # the default tree is also the `tree_nodes` view, as every other table has its own name
    assert ctx.catalog.query("SELECT count(*) AS n, count(DISTINCT tree_id) AS trees FROM tree_nodes").to_pylist() == \
        [{"n": nodes.num_rows, "trees": 1}]
    loaded = load_tree(ctx.catalog, ctx.root, "default")
    assert check_invariants(loaded.tree, [hex_id(i) for i in ids[:N]]) == []

    # unchanged inputs: no new version
    refs2, row2 = _run_stage(ctx, d, e)
    assert refs2["tree_nodes/default"].version == nodes_ref.version

    # three documents leave, four arrive: insert and delete, not a rebuild
    keep = ids[3:N + 4]
    d3, e3 = _publish_corpus(ctx, keep, texts[3:N + 4], vecs[3:N + 4], space)
    refs3, row3 = _run_stage(ctx, d3, e3)
    assert refs3["tree_nodes/default"].version == nodes_ref.version + 1
    assert row3["cache_hits"] == N - 3  # leaves carried over from the previous tree
    tree = load_tree(ctx.catalog, ctx.root, "default").tree
    assert check_invariants(tree, [hex_id(i) for i in keep]) == []
    assert ctx.catalog.query("SELECT count(*) FILTER (WHERE is_leaf) AS n FROM tree_nodes").to_pylist() == \
        [{"n": len(keep)}]  # the view follows the new version
    before = {r["node_id"]: r["summary"] for r in nodes.to_pylist() if not r["is_leaf"]}
    after = {r["node_id"]: r["summary"] for r in read(ctx.catalog, ctx.root, "tree_nodes/default").to_pylist()
             if not r["is_leaf"]}
    changed = [n for n in before if n in after and before[n] != after[n]]
    assert 0 < len(changed) <= 7 * (tree.height() + 2)  # only the touched paths were re-summarized
    assert len(set(before) & set(after)) >= 0.8 * len(before)


def test_image_documents_without_text_are_quarantined_with_a_reason(store):
    import pyarrow as pa

    ctx, (ids, texts, vecs, space), _ = store
    docs, emb = corpus_tables(ids[:30], texts[:30], vecs[:30], space)
    rows = docs.to_pylist()
    rows[0].update(modality="image", text=None, image_uri="a.jpg")
    docs = pa.Table.from_pylist(rows, schema=docs.schema)
    cfg = config_from_dict({"corpus": {"root": ".", "sources": [{"kind": "manifest", "path": "x"}]},
                            "tree": {"node_vectors": "centroid"}})
    out = run_pure(TreeStage(cfg), {"documents": docs, "embeddings/text": emb})
    assert out.rows_in == 30 and out.rows_out == 29 and out.rows_quarantined == 1
    assert "no text vector" in out.quarantine["reason"][0].as_py()


def test_search_flow_writes_a_trec_run_into_the_catalog(store, prefect_harness, tmp_path):
    from flows.search import search_flow

    ctx, (ids, texts, vecs, space), queries = store
    if ctx.catalog.current("tree_nodes/default") is None:
        d, e = _publish_corpus(ctx, ids[:N], texts[:N], vecs[:N], space)
        _run_stage(ctx, d, e)
    qfile = tmp_path / "queries.tsv"
    chosen = sorted(queries)[:4]
    qfile.write_text("".join(f"{q}\t{queries[q]}\n" for q in chosen) + "qempty\t \n")
    trec = tmp_path / "run.txt"
    summary = search_flow(catalog=ctx.config.catalog_path, queries_file=str(qfile), k=20, trec_out=str(trec))
    assert summary["queries"] == 4 and summary["quarantined"] == 1
    assert summary["queries"] == 4 and summary["quarantined"] == 1
    assert summary["calls_per_query"] <= 39
    run = read(ctx.catalog, ctx.root, "candidates/tree-default")
    assert set(run["query_id"].to_pylist()) == set(chosen)
    assert run.num_rows == 4 * 20
    assert all(r.startswith("tree:default:embedding") for r in run["retriever"].to_pylist())
    lines = trec.read_text().splitlines()
    assert len(lines) == 80 and lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    parents = ctx.catalog.lineage("candidates/tree-default").to_pylist()
    assert any(p["parent_name"] == "tree_nodes/default" for p in parents)
    runs = ctx.catalog.query("SELECT status FROM runs WHERE flow = 'search'")["status"].to_pylist()
    assert runs == ["completed"]


def test_cli_search_prints_ranking_with_paths(store, capsys):
    from flows.cli import main

    ctx, (ids, texts, vecs, space), queries = store
    if ctx.catalog.current("tree_nodes/default") is None:
        d, e = _publish_corpus(ctx, ids[:N], texts[:N], vecs[:N], space)
        _run_stage(ctx, d, e)
    assert main(["search-tree", "how does a bounty hunter make money", "--catalog", ctx.config.catalog_path,
                 "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "scorer calls" in out and "  1. " in out and "  3. " in out and "└ " in out
    assert main(["tree", "show", "--catalog", ctx.config.catalog_path, "--depth", "1"]) == 0
    assert "documents" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no tree named 'nope'"):
        main(["search-tree", "q", "--catalog", ctx.config.catalog_path, "--tree", "nope"])
    with pytest.raises(SystemExit, match=r"^no tree named 'nope' in catalog .*available: default$"):  # not repr()
        main(["search-tree", "q", "--catalog", ctx.config.catalog_path, "--tree", "nope"])
    with pytest.raises(SystemExit, match="the query text is empty"):
        main(["search-tree", "  ", "--catalog", ctx.config.catalog_path])


def test_a_large_tree_is_built_in_a_ray_task_and_equals_the_in_process_build(ray_local, tmp_path, minilm):
    """tree.task.local_below 0 sends the build to a Ray task: same nodes, peak memory recorded."""
    ids, texts, vecs, _, _ = llmjudge_slice()
    built = {}
    for where, below in (("task", 0), ("flow", 10**9)):
        work = tmp_path / where
        cfg = config_from_dict({"name": "treetask", "corpus": {"root": str(work), "sources": [{"kind": "manifest",
                                "path": "x"}]}, "workdir": str(work),
                                "tree": {"max_branching": 8, "task": {"local_below": below}}})
        ctx = Ctx(cfg)
        d, e = _publish_corpus(ctx, ids[:120], texts[:120], vecs[:120], minilm.name)
        _, summary = run_one(ctx.config, TreeStage(ctx.config))
        assert summary["memory"]["where"] == ("ray task" if where == "task" else "flow process")
        assert summary["memory"]["peak_mb"] > 0
        nodes = read(ctx.catalog, ctx.root, "tree_nodes/default").sort_by("node_id")
        built[where] = nodes.select(["node_id", "parent_id", "is_leaf", "doc_id", "summary"]).to_pylist()
    assert built["task"] == built["flow"]
