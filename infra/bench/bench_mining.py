"""Hard negative mining vs sentence_transformers.util.mine_hard_negatives, same texts, model, parameters.

BENCH mining cold_ratio=<ours/theirs> warm_speedup=<theirs/ours_warm> peak_mem_mb_10k=<a> peak_mem_mb_100k=<b> ...

- cold: from texts to negatives. Theirs: mine_hard_negatives (embeds corpus + queries, FAISS top-k,
  filters). Ours: the embed stage (in-process compute), the index stage and the mining stage,
  each publishing through the catalog and its validation gate.
- warm: our embeddings (documents and queries) are already in the catalog; index + mine + publish.
- peak memory: peak RSS of a fresh process running the warm path, at both corpus sizes.
Parameters: num_negatives=5, relative_margin=0.05 (NV-Retriever TopK-PercPos), top sampling.

The cold comparison runs at the small size. The large corpus is embedded once and its vectors kept
in BENCH_MINING_CACHE (default .corpusforge/bench/mining), so later runs skip that hour-long
step on 2 cores; the line says which sizes each number comes from.
Sizes: BENCH_MINING_N_SMALL (10000), BENCH_MINING_N_LARGE (100000), BENCH_MINING_QUERIES (1000);
BENCH_MINING_REPEATS (1) alternates the cold runs and keeps each side's best.
BENCH_MINING_LARGE_VECTORS=synthetic gives the documents past the small size random unit vectors
instead of embedding them (timing and memory only; the line says so).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"num_negatives": 5, "relative_margin": 0.05}


def texts_and_queries(n: int, nq: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n passages of 24-40 words cut from real MS MARCO passages; query i is 8 words of passage i."""
    from infra.bench.corpora import passages

    base = [p.split() for p in passages()]
    rng = random.Random(seed)
    docs, queries = [], []
    for i in range(n):
        words = base[rng.randrange(len(base))]
        length = rng.randint(24, 40)
        start = rng.randrange(max(1, len(words) - length))
        docs.append(f"[{i}] " + " ".join(words[start:start + length]))
        if i < nq:
            q0 = rng.randrange(max(1, min(len(words), length) - 8))
            queries.append(" ".join(words[start + q0:start + q0 + 8]))
    return docs, queries


def _config(workdir: Path):
    from schemas.config import config_from_dict

    return config_from_dict({
        "name": "bench-mining", "corpus": {"root": str(workdir), "sources": [{"kind": "manifest", "path": "x"}]},
        # the peer's encode batch size (mine_hard_negatives' default); in-process, as the peer is
        "workdir": str(workdir), "embed": {"local_below": 10**9, "text": {"batch_size": 32}},
        "index": {"bm25": False},  # dense mining, as the peer does; BM25 is not used here
        "negatives": PARAMS | {"queries_file": str(workdir / "topics.tsv"), "qrels_file": str(workdir / "qrels.txt")},
    })


def _documents(docs: list[str]):
    import pyarrow as pa

    from schemas.tables import DOCUMENTS
    from tasks.runtime.ids import record_id

    n = len(docs)
    ids = [record_id("bench", t) for t in docs]
    return pa.table({"doc_id": ids, "source_id": [f"doc-{i}" for i in range(n)], "modality": ["text"] * n,
                     "text": docs, "image_uri": [None] * n, "image_sha256": [None] * n,
                     "image_width": pa.array([None] * n, pa.int32()), "image_height": pa.array([None] * n, pa.int32()),
                     "image_format": [None] * n, "alt_text": [None] * n, "source": ["bench"] * n, "meta": [None] * n},
                    schema=DOCUMENTS)


def _write_inputs(workdir: Path, queries: list[str]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "topics.tsv").write_text("".join(f"q{i}\t{q}\n" for i, q in enumerate(queries)))
    (workdir / "qrels.txt").write_text("".join(f"q{i} 0 doc-{i} 3\n" for i in range(len(queries))))


def ours_cold(workdir: Path, docs: list[str], queries: list[str]) -> tuple[float, dict]:
    """Texts -> embeddings (embed stage) -> index -> negatives, everything published."""
    from tasks.embed import EmbedText
    from tasks.index.stage import Index
    from tasks.negatives.stage import Negatives
    from tasks.runtime.lifecycle import Run, open_run
    from tasks.runtime.write import seed

    cfg = _config(workdir)
    _write_inputs(workdir, queries)
    t0 = time.perf_counter()
    store = Run.open(cfg)
    seed(store.catalog, store.root, "documents", _documents(docs))
    with open_run(cfg, "bench") as run:
        from tasks.runtime.runner import run_stage

        for cls in (EmbedText, Index, Negatives):
            run_stage(run, cls(cfg))
    report = run.summaries[-1]["notes"]
    seconds = time.perf_counter() - t0
    assert report["queries_mined"] == len(queries), report
    stages = {s["stage"]: s["seconds"] for s in run.summaries}
    return seconds, stages


def ours_warm_child(workdir: str) -> None:
    """Run in a fresh process: index + mine over embeddings already in the catalog; prints JSON."""
    from tasks.index.stage import Index
    from tasks.negatives.stage import Negatives
    from tasks.runtime.lifecycle import open_run
    from tasks.runtime.runner import run_stage

    cfg = _config(Path(workdir))
    t0 = time.perf_counter()
    with open_run(cfg, "bench") as run:
        run_stage(run, Index(cfg))
        run_stage(run, Negatives(cfg))
    idx, report = run.summaries[0]["notes"], run.summaries[1]["notes"]
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_mb": _vm_hwm_mb(),
                      "index_type": idx["text"]["type"], "mode": report["mode"], "rows": report["rows"],
                      "queries_mined": report["queries_mined"]}))


def _vm_hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM starts afresh at exec, unlike ru_maxrss after a fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_warm(workdir: Path, docs: list[str], queries: list[str], doc_vecs, query_vecs) -> None:
    """A catalog holding documents and their embeddings, and the query vectors in the embed cache."""
    import pyarrow as pa

    from schemas.tables import embeddings_schema
    from tasks.backends.embedders import text_space
    from tasks.embed import EmbedText
    from tasks.runtime.cache import WorkCache
    from tasks.runtime.ids import cache_key, text_sha256
    from tasks.runtime.lifecycle import Run
    from tasks.runtime.stage import KEY
    from tasks.runtime.write import seed

    cfg = _config(workdir)
    _write_inputs(workdir, queries)
    run = Run.open(cfg)
    documents = _documents(docs)
    d = seed(run.catalog, run.root, "documents", documents)
    dim = doc_vecs.shape[1]
    emb = pa.table({"item_id": documents["doc_id"], "item_kind": ["document"] * len(docs),
                    "doc_id": documents["doc_id"], "content_sha256": [text_sha256(t) for t in docs],
                    "space": [text_space(cfg.embed.text)] * len(docs),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(doc_vecs.ravel()), dim)},
                   schema=embeddings_schema(dim))
    seed(run.catalog, run.root, "embeddings/text", emb, [d])
    fp = EmbedText(cfg).work_fingerprint()
    keys = list(dict.fromkeys(cache_key(text_sha256(q), fp) for q in queries))
    first = {cache_key(text_sha256(q), fp): i for i, q in reversed(list(enumerate(queries)))}
    qv = query_vecs[[first[k] for k in keys]]
    WorkCache(run.root, "embed_text", fp).append(pa.table({KEY: keys, "vector": pa.array(list(qv),
                                                                                        pa.list_(pa.float32()))}))


def run_warm(workdir: Path) -> dict:
    code = f"from infra.bench.bench_mining import ours_warm_child; ours_warm_child({str(workdir)!r})"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"warm mining failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def theirs_cold(model, docs: list[str], queries: list[str]) -> float:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    ds = Dataset.from_dict({"query": queries, "positive": docs[:len(queries)]})
    t0 = time.perf_counter()
    out = mine_hard_negatives(ds, model, corpus=docs, use_faiss=True, batch_size=32, verbose=False,
                              output_format="triplet", **PARAMS)
    seconds = time.perf_counter() - t0
    assert len(out) > 0
    return seconds


def cached_vectors(cache: Path, texts: list[str], embedder, synthetic_after: int | None = None) -> "np.ndarray":  # noqa: F821
    """Real vectors of the texts, embedded once and kept in the cache folder. With `synthetic_after`,
    texts past that index get random unit vectors instead (only for timing/memory at scale)."""
    import numpy as np

    if synthetic_after is not None and synthetic_after < len(texts):
        head = cached_vectors(cache, texts[:synthetic_after], embedder)
        rng = np.random.default_rng(0)
        tail = rng.normal(size=(len(texts) - synthetic_after, head.shape[1])).astype(np.float32)
        return np.concatenate([head, tail / np.linalg.norm(tail, axis=1, keepdims=True)])
    key = hashlib.sha256(json.dumps([embedder.name, texts]).encode()).hexdigest()[:16]
    path = cache / f"vectors-{len(texts)}-{key}.npy"
    if path.exists():
        return np.load(path)
    vecs = np.concatenate([embedder.embed(texts[i:i + 4096]) for i in range(0, len(texts), 4096)])
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def main() -> None:
    from tasks.backends.embedders import minilm

    n_small = int(os.environ.get("BENCH_MINING_N_SMALL", 10_000))
    n_large = int(os.environ.get("BENCH_MINING_N_LARGE", 100_000))
    nq = int(os.environ.get("BENCH_MINING_QUERIES", 1000))
    cache = Path(os.environ.get("BENCH_MINING_CACHE", REPO / ".corpusforge" / "bench" / "mining"))
    synthetic = os.environ.get("BENCH_MINING_LARGE_VECTORS", "real") == "synthetic"
    docs_large, queries = texts_and_queries(max(n_small, n_large), nq)
    docs_small = docs_large[:n_small]
    embedder = minilm()
    embedder.embed(docs_small[:64])  # both sides start with a loaded, warmed-up model

    repeats = int(os.environ.get("BENCH_MINING_REPEATS", 1))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs_ours, runs_theirs = [], []
        for r in range(repeats):  # alternate, and keep each side's best: the machine is shared
            runs_ours.append(ours_cold(tmp / f"cold-{r}", docs_small, queries))
            runs_theirs.append(theirs_cold(embedder.model, docs_small, queries))
        ours, stages = min(runs_ours, key=lambda x: x[0])
        theirs = min(runs_theirs)
        prepare_warm(tmp / "warm-small", docs_small, queries, cached_vectors(cache, docs_small, embedder),
                     cached_vectors(cache, queries, embedder))
        warm_small = run_warm(tmp / "warm-small")
        prepare_warm(tmp / "warm-large", docs_large[:n_large], queries,
                     cached_vectors(cache, docs_large[:n_large], embedder, n_small if synthetic else None),
                     cached_vectors(cache, queries, embedder))
        warm_large = run_warm(tmp / "warm-large")
    k = lambda n: f"{n // 1000}k" if n % 1000 == 0 else str(n)  # noqa: E731
    print(f"BENCH mining cold_ratio={ours / theirs:.3f} warm_speedup={theirs / warm_small['seconds']:.1f} "
          f"peak_mem_mb_10k={warm_small['peak_mb']:.0f} peak_mem_mb_100k={warm_large['peak_mb']:.0f} "
          f"ours_cold_s={ours:.1f} theirs_cold_s={theirs:.1f} ours_warm_s={warm_small['seconds']:.2f} "
          f"ours_embed_s={stages.get('embed_text', 0):.1f} ours_index_s={stages.get('index', 0):.2f} "
          f"ours_mine_s={stages.get('negatives', 0):.2f} repeats={repeats} "
          f"ours_warm_100k_s={warm_large['seconds']:.2f} cold_at={k(n_small)} peak_sizes={k(n_small)},{k(n_large)} "
          f"queries={nq} index={warm_small['index_type']},{warm_large['index_type']} "
          f"theirs_at_large=not_run large_vectors={'synthetic_past_' + k(n_small) if synthetic else 'real'}",
          flush=True)


if __name__ == "__main__":
    main()
