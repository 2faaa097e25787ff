"""Index stage: FAISS type choice, correctness of every type, incremental add, storage, BM25, search."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from schemas.config import IndexConfig
from tasks.index.lexical import LexicalIndex, lexical_texts
from tasks.index.plan import plan_index
from tasks.index.search import search
from tasks.index.stage import Index
from tasks.index.store import IndexStore
from tasks.index.refresh import refresh_vector_index
from tasks.index.vector import VectorIndex
from tasks.runtime.catalog import Catalog
from tasks.runtime.storage import DataRoot
from tasks.runtime.write import seed
from tests.stages import run_one

SPACE = "test-space@1"


def clustered(n: int, dim: int = 32, seed: int = 0, centers: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embeddings(vectors: np.ndarray, doc_ids=None, kinds=None, item_ids=None, space: str = SPACE,
               contents=None) -> pa.Table:
    n = len(vectors)
    doc_ids = doc_ids or [f"d{i:05d}" for i in range(n)]
    item_ids = item_ids or list(doc_ids)
    return pa.table({
        "item_id": item_ids, "item_kind": kinds or ["document"] * n, "doc_id": doc_ids,
        "content_sha256": [hashlib.sha256(c.encode() if isinstance(c, str) else c.tobytes()).hexdigest()
                           for c in (contents or vectors)],
        "space": [space] * n,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors).ravel()), vectors.shape[1]),
    })


# ---- type choice ---------------------------------------------------------------------------------
def test_plan_follows_size_and_budget():
    cfg = IndexConfig()
    assert plan_index(50_000, 384, cfg).type == "flat"
    assert plan_index(100_000, 384, cfg).type == "flat"
    assert plan_index(500_000, 384, cfg).type == "hnsw"
    # HNSW (vectors + links) no longer fits, IVF-Flat does
    p = plan_index(500_000, 384, IndexConfig(memory_budget_mb=760))
    assert p.type == "ivf_flat" and p.est_mb <= 760 and p.params["nlist"] == int(4 * np.sqrt(500_000))
    # a budget below the raw vectors forces product quantization, sized to fit
    pq = plan_index(2_000_000, 384, IndexConfig(memory_budget_mb=200))
    assert pq.type == "ivf_pq" and 384 % pq.params["pq_m"] == 0 and pq.est_mb <= 200
    assert pq.factory.startswith(f"IVF{pq.params['nlist']},PQ{pq.params['pq_m']}x")
    # past the HNSW ceiling IVF takes over even when memory is plentiful
    assert plan_index(3_000_000, 64, IndexConfig(memory_budget_mb=1e6)).type == "ivf_flat"
    assert plan_index(10, 8, IndexConfig(type="hnsw")).type == "hnsw"


@pytest.mark.parametrize("kind,min_recall", [("flat", 1.0), ("hnsw", 0.95), ("ivf_flat", 0.9), ("ivf_pq", 0.4)])
def test_every_type_finds_the_true_neighbours(kind, min_recall):
    x = clustered(4000)
    q = clustered(50, seed=1)
    cfg = IndexConfig(type=kind, ivf_nprobe=16, pq_bits=6)
    vi = refresh_vector_index("t", embeddings(x), None, cfg).index
    assert vi.type == kind and vi.count == 4000
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    s, d = vi.search_docs(q, 10)
    found = np.array([[int(vi.docs[j][1:]) for j in row] for row in d])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])
    assert recall >= min_recall
    assert np.all(np.diff(s, axis=1) <= 1e-6)  # descending
    # the scores the miner compares against positives are what reconstruct() gives: same scale
    exact = vi.doc_scores(q[:5], [row[:3] for row in d[:5]])
    assert np.allclose(np.stack(exact), s[:5, :3], atol=2e-3 if kind == "ivf_pq" else 1e-5)


def test_documents_with_several_vectors_score_as_their_best_item():
    rng = np.random.default_rng(3)
    base = clustered(30, dim=16, seed=3)
    extra = base[:5] + 0.05 * rng.normal(size=(5, 16)).astype(np.float32)
    vecs = np.concatenate([base, extra]).astype(np.float32)
    doc_ids = [f"d{i:05d}" for i in range(30)] + [f"d{i:05d}" for i in range(5)]
    kinds = ["document"] * 30 + ["caption"] * 5
    items = [f"d{i:05d}" for i in range(30)] + [f"c{i}" for i in range(5)]
    vi = refresh_vector_index("t", embeddings(vecs, doc_ids, kinds, items), None, IndexConfig()).index
    assert vi.max_items_per_doc == 2 and len(vi.docs) == 30
    s, d = vi.search_docs(extra[:3], 30)
    for row_s, row_d, qv in zip(s, d, extra[:3]):
        assert len(set(row_d.tolist())) == 30  # every document once
        best = {doc: max(float(v @ qv) for v, dd in zip(vecs, doc_ids) if dd == doc) for doc in set(doc_ids)}
        assert np.allclose(row_s, [best[vi.docs[j]] for j in row_d], atol=1e-5)


# ---- refresh ------------------------------------------------------------------------------------
def test_new_vectors_go_into_a_new_segment_and_old_ones_are_never_rewritten():
    x = clustered(1200)
    first = refresh_vector_index("t", embeddings(x[:1000]), None, IndexConfig())
    faiss_obj = first.index.segments[0].index
    grown = refresh_vector_index("t", embeddings(x), first.index, IndexConfig())
    assert grown.action == "added" and grown.added == 200
    assert len(grown.index.segments) == 2 and grown.index.segments[0].index is faiss_obj
    assert grown.index.count == 1200 and grown.index.manifest["added_since_build"] == 200
    assert grown.new_rows.num_rows == 200 and grown.new_rows["position"].to_pylist() == list(range(1000, 1200))
    s, d = grown.index.search_docs(x[1100:1101], 1)
    assert grown.index.docs[d[0, 0]] == "d01100" and s[0, 0] == pytest.approx(1.0, abs=1e-5)
    # a flat index in segments answers exactly like one flat index over the same vectors
    whole = refresh_vector_index("t", embeddings(x), None, IndexConfig()).index
    q = clustered(20, seed=5)
    s1, d1 = whole.search_docs(q, 15)
    s2, d2 = grown.index.search_docs(q, 15)
    assert np.allclose(s1, s2, atol=1e-6) and [list(whole.docs[r]) for r in d1] == [list(grown.index.docs[r]) for r in d2]
    same = refresh_vector_index("t", embeddings(x), grown.index, IndexConfig())
    assert same.action == "unchanged"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat"])
def test_removed_vectors_are_masked_until_compaction(kind):
    x = clustered(2000)
    cfg = IndexConfig(type=kind, ivf_nprobe=64, compact_fraction=0.25)
    prev = refresh_vector_index("t", embeddings(x), None, cfg).index
    keep = np.r_[0:100, 400:2000]  # 300 of 2000 removed (15%): masked, not rebuilt
    res = refresh_vector_index("t", embeddings(x[keep], doc_ids=[f"d{i:05d}" for i in keep]), prev, cfg)
    assert res.action == "added" and res.removed == 300 and res.added == 0
    assert sorted(res.removed_positions.tolist()) == list(range(100, 400))
    vi = res.index
    assert vi.count == 1700 and vi.stored == 2000
    s, d = vi.search_docs(x[100:400], 5)  # the removed vectors themselves never come back
    found = {vi.docs[j] for row in d for j in row if j >= 0}
    assert not found & {f"d{i:05d}" for i in range(100, 400)} and (d >= 0).all()
    s, d = vi.search_docs(x[500:510], 1)
    assert [vi.docs[j] for j in d[:, 0]] == [f"d{i:05d}" for i in range(500, 510)]
    # removing 600 of 2000 would mask 30% > 25%: compaction rebuilds
    rest = np.r_[0:100, 700:2000]
    again = refresh_vector_index("t", embeddings(x[rest], doc_ids=[f"d{i:05d}" for i in rest]), vi, cfg)
    assert again.action == "built" and again.reason.startswith("compaction") and again.index.stored == 1400


def test_ivf_segments_share_the_trained_quantizer():
    x = clustered(3000)
    cfg = IndexConfig(type="ivf_flat", ivf_nprobe=64, retrain_growth=2.0)
    prev = refresh_vector_index("t", embeddings(x[:2000]), None, cfg).index
    assert prev.manifest["template"]["file"] == "trained.faiss"
    res = refresh_vector_index("t", embeddings(x), prev, cfg)
    assert res.action == "added" and len(res.index.segments) == 2
    s, d = res.index.search_docs(x[2500:2510], 1)
    assert [res.index.docs[j] for j in d[:, 0]] == [f"d{i:05d}" for i in range(2500, 2510)]


def test_too_many_segments_compact():
    x = clustered(1000)
    cfg = IndexConfig(max_segments=3)
    vi = refresh_vector_index("t", embeddings(x[:700]), None, cfg).index
    actions = []
    for n in (800, 900, 1000):
        res = refresh_vector_index("t", embeddings(x[:n]), vi, cfg)
        actions.append(res.action)
        vi = res.index
    assert actions == ["added", "added", "built"] and len(vi.segments) == 1 and vi.count == 1000


@pytest.mark.parametrize("case", ["type_change", "ivf_outgrown", "space"])
def test_rebuild_when_adding_is_not_enough(case):
    x = clustered(3000)
    cfg = IndexConfig(flat_max_vectors=2500) if case == "type_change" else IndexConfig(
        type="ivf_flat" if case == "ivf_outgrown" else "auto", retrain_growth=1.4)
    prev = refresh_vector_index("t", embeddings(x[:2000]), None, cfg).index
    if case == "space":
        new = embeddings(x[:2000], space="other@2")
    else:
        new = embeddings(x)
    res = refresh_vector_index("t", new, prev, cfg)
    assert res.action == "built" and res.reason
    if case == "type_change":
        assert prev.type == "flat" and res.index.type == "hnsw"


# ---- storage ------------------------------------------------------------------------------------
def test_store_publishes_versions_atomically_and_round_trips(tmp_path):
    catalog, root = Catalog(tmp_path / "c.duckdb"), DataRoot(str(tmp_path / "data"))
    store = IndexStore(catalog, root)
    x = clustered(600)
    for kind in ("flat", "hnsw", "ivf_pq"):
        vi = refresh_vector_index(kind, embeddings(x), None, IndexConfig(type=kind, pq_bits=5)).index
        seed(catalog, root, f"indexes/{kind}", vi.to_output("built"))
        back = store.load_vector(kind)
        assert back.type == kind and back.count == 600 and list(back.docs) == list(vi.docs)
        s1, d1 = vi.search_docs(x[:7], 5)
        s2, d2 = back.search_docs(x[:7], 5)
        assert np.array_equal(d1, d2) and np.allclose(s1, s2)
    vi = store.load_vector("flat")
    more = clustered(5, seed=9)
    grown = refresh_vector_index("flat", pa.concat_tables([embeddings(x), embeddings(more, doc_ids=[f"n{i}" for i in range(5)])]),
                                 vi, IndexConfig(type="flat"))
    out = grown.index.to_output("added", added=grown.new_rows)
    assert list(out.attachments) == [grown.index.segments[1].file]  # only the new segment is written
    assert seed(catalog, root, "indexes/flat", out).version == 2
    rows = catalog.query("SELECT name, version, is_current, count, action FROM indexes WHERE name='flat' ORDER BY version").to_pylist()
    assert [(r["version"], r["is_current"], r["count"], r["action"]) for r in rows] == [(1, False, 600, "built"), (2, True, 605, "added")]
    assert store.items_of("flat", 1).num_rows == 600 and store.items_of("flat", 2).num_rows == 605
    back = store.load_vector("flat")
    assert len(back.segments) == 2 and back.segments[0].dir != back.segments[1].dir  # v1's file is shared
    s, d = back.search_docs(more[:2], 1)
    assert [back.docs[j] for j in d[:, 0]] == ["n0", "n1"]


# ---- BM25 ---------------------------------------------------------------------------------------
DOCS = pa.table({
    "doc_id": ["a", "b", "c", "d"],
    "modality": ["text", "image", "interleaved", "text"],
    "text": ["Riding a motorcycle in fog needs dipped headlights", None, "A giraffe eats leaves", "Kitchen knives"],
    "alt_text": [None, "a red double-decker bus in London", None, None],
})
CAPTIONS = pa.table({"doc_id": ["b", "c"], "text": ["tourists on an open-top bus", "tall giraffe near a tree"]})


def test_bm25_covers_texts_alt_text_and_captions(tmp_path):
    texts = lexical_texts(DOCS, CAPTIONS)
    assert dict(zip(texts["doc_id"].to_pylist(), texts["text"].to_pylist()))["b"] == \
        "[Image: tourists on an open-top bus]\n[Image: a red double-decker bus in London]"  # the one rule
    lex = LexicalIndex.build(texts, IndexConfig())
    s, d = lex.search(["bus tourists", "giraffe", "zebra crossing"], 3)
    assert lex.docs[d[0, 0]] == "b" and lex.docs[d[1, 0]] == "c"
    assert (d[2] == -1).all() and np.isinf(s[2]).all()  # nothing shares a word: no fake matches
    assert (d[0, 1:] == -1).all()  # only one document mentions buses
    catalog, root = Catalog(tmp_path / "c.duckdb"), DataRoot(str(tmp_path))
    seed(catalog, root, "indexes/bm25", lex.to_output())
    back = IndexStore(catalog, root).load_lexical()
    s2, d2 = back.search(["bus tourists", "giraffe"], 3)
    assert np.array_equal(d[:2], d2) and np.allclose(s[:2], s2)


# ---- the stage and the search API on a real catalog ----------------------------------------------
def _publish(cfg, name, table, parents=()):
    from tests.stages import seed as put

    return put(cfg, name, table, parents)


@pytest.fixture()
def ctx(tmp_path):
    from schemas.config import config_from_dict

    return config_from_dict({"corpus": {"root": str(tmp_path), "sources": [{"kind": "manifest", "path": "x"}]},
                             "workdir": str(tmp_path / "work")})


def run_index(cfg) -> dict:
    refs, summary = run_one(cfg, Index(cfg))
    return {name: s | {"version": refs[f"indexes/{name}"].version} for name, s in summary["notes"].items()}


def _docs(texts: dict[str, str]) -> pa.Table:
    from schemas.tables import DOCUMENTS

    ids = list(texts)
    return pa.table({"doc_id": ids, "source_id": ids, "modality": ["text"] * len(ids), "text": list(texts.values()),
                     "image_uri": [None] * len(ids), "image_sha256": [None] * len(ids),
                     "image_width": pa.array([None] * len(ids), pa.int32()),
                     "image_height": pa.array([None] * len(ids), pa.int32()), "image_format": [None] * len(ids),
                     "alt_text": [None] * len(ids), "source": ["test"] * len(ids), "meta": [None] * len(ids)},
                    schema=DOCUMENTS)


TEXTS = {
    "0" * 31 + "1": "The giraffe is the tallest living land animal.",
    "0" * 31 + "2": "Motorcycles should use dipped headlights in fog.",
    "0" * 31 + "3": "Keep kitchen knives on a magnetic strip.",
    "0" * 31 + "4": "A double-decker bus drives through London.",
}


def test_index_stage_builds_refreshes_and_searches(ctx, minilm):
    from tasks.embed import TEXT_DATASET

    def emb(texts):
        vecs = minilm.embed(list(texts.values()))
        # like the embed stage, the content hash is the text's: re-embedding in another batch is no change
        return embeddings(vecs, doc_ids=list(texts), space=minilm.name, contents=list(texts.values()))

    docs1 = _publish(ctx, "documents", _docs(dict(list(TEXTS.items())[:3])))
    _publish(ctx, TEXT_DATASET, emb(dict(list(TEXTS.items())[:3])), [docs1])
    first = run_index(ctx)
    assert first["text"]["action"] == "built" and first["text"]["count"] == 3 and first["bm25"]["action"] == "built"
    again = run_index(ctx)
    assert again["text"]["action"] == "unchanged" and again["bm25"]["action"] == "unchanged"

    docs2 = _publish(ctx, "documents", _docs(TEXTS))
    _publish(ctx, TEXT_DATASET, emb(TEXTS), [docs2])
    grown = run_index(ctx)
    assert grown["text"]["action"] == "added" and grown["text"]["count"] == 4 and grown["text"]["version"] == 2
    assert grown["bm25"]["action"] == "built" and grown["bm25"]["version"] == 2

    store = IndexStore(Catalog(ctx.catalog_path), DataRoot(ctx.data_root_uri))
    hits = search(store, "a tall animal with a long neck", k=2)
    assert hits["doc_id"][0].as_py() == "0" * 31 + "1" and hits.num_rows == 2
    assert hits["score"][0].as_py() > hits["score"][1].as_py()
    lex = search(store, "London bus", k=3, retriever="bm25")
    assert lex["doc_id"].to_pylist() == ["0" * 31 + "4"]
    both = search(store, "bus in London", k=3, retriever="both")
    assert both["doc_id"][0].as_py() == "0" * 31 + "4" and set(both["retriever"].to_pylist()) == {"rrf"}
    with pytest.raises(LookupError, match="no vector index 'image'"):
        search(store, "x", index="image")
    for blank in ("", " \t\n"):  # an empty query would rank by the embedding of nothing
        with pytest.raises(ValueError, match="the query text is empty"):
            search(store, blank, retriever="both")


def test_vector_index_is_plain_data():
    """The id map is the contract: item `position` is the FAISS id across the segments."""
    from tasks.index.plan import fill, train_faiss
    from tasks.index.vector import Segment, Vectors

    x = clustered(10, dim=8)
    plan = plan_index(10, 8, IndexConfig())
    vecs = Vectors.from_table(embeddings(x))
    items = embeddings(x).select(["item_id", "item_kind", "doc_id", "content_sha256"])
    items = items.add_column(0, "position", pa.array(range(10), pa.int64()))
    vi = VectorIndex("t", [Segment(fill(train_faiss(vecs, plan), vecs.batches(), plan), 0, "s.faiss")], items,
                     {"type": "flat", "params": {}, "dim": 8})
    assert vi.doc_position(["d00003", "nope"]).tolist() == [3, -1]
    s, rows = vi.search_items(x[3:4], 1)
    assert rows[0, 0] == 3


def test_a_large_index_is_built_in_a_ray_task_with_its_peak_memory(ctx, tmp_path):
    """index.task.local_below: 0 sends the build to a Ray task: the outputs come back as staged parts
    and files under the data root, equal to an in-process build, and the task's peak is recorded."""
    from tasks.embed import TEXT_DATASET
    from tasks.runtime.catalog import Catalog

    x = clustered(3000, dim=16)
    ids = [f"{i:032x}" for i in range(3000)]
    docs = _publish(ctx, "documents", _docs({d: f"text {d}" for d in ids}))
    _publish(ctx, TEXT_DATASET, embeddings(x, doc_ids=ids), [docs])
    remote = ctx.model_copy(update={"index": ctx.index.model_copy(update={
        "bm25": False, "task": ctx.index.task.model_copy(update={"local_below": 0})})})
    refs, summary = run_one(remote, Index(remote))
    assert summary["memory"]["where"] == "ray task" and summary["memory"]["peak_mb"] > 50
    catalog = Catalog(ctx.catalog_path)
    peak = catalog.query("SELECT peak_memory_mb FROM stage_runs WHERE stage = 'index'").column(0).to_pylist()
    assert peak == [summary["memory"]["peak_mb"]]
    store = IndexStore(catalog, DataRoot(ctx.data_root_uri))
    vi = store.load_vector("text")
    local = refresh_vector_index("text", embeddings(x, doc_ids=ids), None, IndexConfig()).index
    s1, d1 = vi.search_docs(x[:20], 5)
    s2, d2 = local.search_docs(x[:20], 5)
    assert np.allclose(s1, s2) and [list(vi.docs[r]) for r in d1] == [list(local.docs[r]) for r in d2]
    assert not DataRoot(ctx.data_root_uri).list_files(DataRoot(ctx.data_root_uri).path("_staging"), suffix="")
