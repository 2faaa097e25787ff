"""Generation benchmarks: the caption and query stages through the build flow vs a bare batched loop.

BENCH caption_flow ratio=<flow/bare> batch_speedup=<b16/b1> ratio_excl_startup=.. startup_s=.. flow_items_per_s=.. ...
BENCH query_flow ratio=<flow/bare> batch_speedup=<b16/b1> ratio_excl_startup=.. startup_s=.. flow_items_per_s=.. ...

Both use the tests' tiny random-weight models (BLIP captioner, Llama causal LM) and the same
inputs on both sides. Flow throughput is the stage's own wall time as recorded in the catalog
(reading inputs, starting the Ray actor pool, generating, caching, filtering, validating and
publishing); bare throughput is one in-process batched loop over the same model and inputs.
`batch_speedup` is the bare loop at batch 16 over batch 1. `startup_s` is measured separately in
the same run: an actor pool of the same configuration started and given one item (process start,
imports, model load); `ratio_excl_startup` takes it out of the flow's time. With a tiny model the
startup is most of the gap; with a real model the generation time dwarfs it.

Like for like: the flow runs BENCH_GEN_ACTORS actors (default 1) of one CPU and one torch thread
each, and the bare loop runs with one torch thread, so the ratio measures the flow's overhead.
Sizes: BENCH_CAPTION_N (default 2000 images), BENCH_QUERY_N (default 600 documents),
BENCH_GEN_TOKENS (default 24 new tokens).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pyarrow as pa  # noqa: E402

from infra.bench.corpora import synthetic_texts, write_config, write_manifest  # noqa: E402
from schemas.config import load_config  # noqa: E402
from tasks.runtime.stage import KEY  # noqa: E402

BATCH = 16


def _stage(catalog: str, run_id: str, stage: str) -> tuple[float, int]:
    from tasks.runtime.catalog import Catalog

    row = Catalog(catalog).query("SELECT seconds, model_calls FROM stage_runs WHERE run_id = ? AND stage = ?",
                                 [run_id, stage]).to_pylist()[0]
    return row["seconds"], row["model_calls"]


def _section(name: str, body: dict) -> str:
    """A top-level config section as YAML (JSON flow style is valid YAML)."""
    return f"{name}: {json.dumps(body)}\n"


def _model_section(model: str, actors: int, tokens: int, **extra) -> dict:
    return {"backend": "hf", "model": model, "batch_size": BATCH, "actors": actors, "cpus_per_actor": 1,
            "threads_per_actor": 1, "max_new_tokens": tokens} | extra


def _startup(stage, todo) -> float:
    """Seconds for an actor pool like the stage's to start and return one item."""
    from tasks.runtime.compute import compute

    return _timed(compute, stage.name, stage.work(), todo, lambda out: None)


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_caption_flow(tmp: Path, model: str, n: int, actors: int, tokens: int) -> None:
    import numpy as np
    from PIL import Image

    from flows.build import build
    from tasks.backends.hf import HFCaptioner

    corpus = tmp / "caption-corpus"
    (corpus / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(corpus / "images" / f"{i}.png")
        rows.append({"id": f"img-{i}", "image": f"images/{i}.png"})
    note = {"id": "note", "text": "A note that travels with the benchmark images."}
    (corpus / "documents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + [note]))
    extra = _section("caption", _model_section(model, actors, tokens)) + _section("queries", {"enabled": False})
    config = write_config(tmp / "caption", corpus, tmp / "caption-work", extra)

    def load():
        out = []
        for r in rows:
            with Image.open(corpus / r["image"]) as im:
                out.append(im.convert("RGB"))
        return out

    cap = HFCaptioner(model, batch_size=BATCH, max_new_tokens=tokens)
    cap.caption(load()[:2])  # warm-up, as an actor's first batch would be
    bare = n / _timed(lambda: cap.caption(load()))
    few = load()[:BATCH]
    cap.batch_size = 1
    b1 = len(few) / _timed(cap.caption, few)  # batch 1 vs batch 16 on the same 16 images
    cap.batch_size = BATCH
    b16 = len(few) / _timed(cap.caption, few)

    result = build(config_path=str(config))
    seconds, calls = _stage(result["catalog"], result["run_id"], "caption")
    assert calls == n, f"expected {n} captioner calls, got {calls}"
    from tasks.caption import Caption

    startup = _startup(Caption(load_config(config)), pa.table({KEY: ["warm"], "image_uri": [rows[0]["image"]]}))
    _print("caption_flow", n, seconds, startup, bare, b16 / b1, actors, tokens)


def bench_query_flow(tmp: Path, model: str, n: int, actors: int, tokens: int) -> None:
    from flows.build import build
    from tasks.backends.hf import HFCausalLM
    from tasks.prompts import load_prompt
    from tasks.queries.generate import render_prompt

    texts = [t[:300] for t in synthetic_texts(n, seed=2)]
    corpus = tmp / "query-corpus"
    write_manifest(corpus, texts)
    extra = _section("caption", {"enabled": False}) + _section(
        "queries", _model_section(model, actors, tokens, targets=["text"], per_target=2))
    config = write_config(tmp / "query", corpus, tmp / "query-work", extra)

    template = load_prompt("queries_text", "v1")[0]
    prompts = [render_prompt(template, t, None, 2) for t in texts]
    lm = HFCausalLM(model, batch_size=BATCH, max_new_tokens=tokens)
    lm.generate(prompts[:2])
    bare = n / _timed(lm.generate, prompts)
    few = prompts[:BATCH]
    lm.batch_size = 1
    b1 = len(few) / _timed(lm.generate, few)
    lm.batch_size = BATCH
    b16 = len(few) / _timed(lm.generate, few)

    result = build(config_path=str(config))
    seconds, calls = _stage(result["catalog"], result["run_id"], "queries")
    assert calls >= n, f"expected {n} generator calls (and the queries' embeddings), got {calls}"
    from tasks.queries.stage import Queries

    startup = _startup(Queries(load_config(config)),
                       pa.table({KEY: ["warm"], "target": ["text"], "text": [texts[0]], "caption": [None],
                                 "content_sha256": ["0" * 64]},
                                schema=pa.schema([(KEY, pa.string()), ("target", pa.string()), ("text", pa.string()),
                                                  ("caption", pa.string()), ("content_sha256", pa.string())])))
    _print("query_flow", n, seconds, startup, bare, b16 / b1, actors, tokens)


def _print(name: str, n: int, seconds: float, startup: float, bare: float, speedup: float, actors: int,
           tokens: int) -> None:
    flow = n / seconds
    steady = n / max(seconds - startup, 1e-9)
    print(f"BENCH {name} ratio={flow / bare:.3f} batch_speedup={speedup:.2f} ratio_excl_startup={steady / bare:.3f} "
          f"startup_s={startup:.1f} flow_items_per_s={flow:.2f} bare_items_per_s={bare:.2f} n={n} actors={actors} "
          f"max_new_tokens={tokens}", flush=True)


def main() -> None:
    import torch
    from prefect.testing.utilities import prefect_test_harness

    from tasks.runtime.ray_session import ray_session
    from tests.tiny_models import build_tiny_captioner, build_tiny_causal_lm

    actors = int(os.environ.get("BENCH_GEN_ACTORS", 1))
    tokens = int(os.environ.get("BENCH_GEN_TOKENS", 24))
    torch.set_num_threads(1)  # as each actor runs
    with tempfile.TemporaryDirectory() as d, prefect_test_harness(server_startup_timeout=120), ray_session():
        tmp = Path(d)
        bench_caption_flow(tmp, build_tiny_captioner(tmp / "captioner"), int(os.environ.get("BENCH_CAPTION_N", 2000)),
                           actors, tokens)
        bench_query_flow(tmp, build_tiny_causal_lm(tmp / "lm"), int(os.environ.get("BENCH_QUERY_N", 600)),
                         actors, tokens)


if __name__ == "__main__":
    main()
