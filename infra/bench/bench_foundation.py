"""Foundation benchmarks: the embed stage through the full flow vs a bare encode loop, and refresh cost.

BENCH embed_flow ratio=<flow/bare> flow_items_per_s=<a> bare_items_per_s=<b>
BENCH refresh noop_fraction=<x> delta1pct_fraction=<y> noop_model_calls=<n> startup_s=<s>

Sizes: BENCH_EMBED_N (default 10000), BENCH_REFRESH_N (default 20000).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from infra.bench.corpora import FOUNDATION_ONLY, synthetic_texts, write_config, write_manifest  # noqa: E402


def _stage_seconds(catalog: str, run_id: str, stages: tuple[str, ...] | None = None) -> dict[str, float]:
    from tasks.runtime.catalog import Catalog

    rows = Catalog(catalog).query("SELECT stage, seconds, model_calls FROM stage_runs WHERE run_id = ?",
                                  [run_id]).to_pylist()
    return {r["stage"]: (r["seconds"], r["model_calls"]) for r in rows if not stages or r["stage"] in stages}


def bench_embed_flow(tmp: Path, n: int) -> None:
    from flows.build import build
    from tasks.backends.embedders import minilm

    texts = synthetic_texts(n, seed=1)
    corpus = tmp / "embed-corpus"
    write_manifest(corpus, texts)
    config = write_config(tmp, corpus, tmp / "embed-work", extra=FOUNDATION_ONLY)

    model = minilm()
    model.embed(texts[:64])  # warm-up, as the flow's actor does when it loads
    t0 = time.perf_counter()
    for i in range(0, n, 512):
        model.embed(texts[i:i + 512])
    bare = n / (time.perf_counter() - t0)

    result = build(config_path=str(config))
    seconds, calls = _stage_seconds(result["catalog"], result["run_id"], ("embed_text",))["embed_text"]
    assert calls == n, f"expected {n} model calls, got {calls}"
    flow = n / seconds
    print(f"BENCH embed_flow ratio={flow / bare:.3f} flow_items_per_s={flow:.1f} bare_items_per_s={bare:.1f} n={n}",
          flush=True)


def bench_refresh(tmp: Path, n: int) -> None:
    """Full build, no-op re-run, +1% documents on Ray, +1% more with small jobs run in-process."""
    from flows.build import build

    step = n // 100
    texts = synthetic_texts(n + 2 * step, seed=2)
    corpus = tmp / "refresh-corpus"
    write_manifest(corpus, texts[:n])
    work = tmp / "refresh-work"
    on_ray = write_config(tmp, corpus, work, extra=FOUNDATION_ONLY)

    def run(config: Path) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        result = build(config_path=str(config))
        wall = time.perf_counter() - t0
        stages = _stage_seconds(result["catalog"], result["run_id"])
        return wall, sum(s for s, _ in stages.values()), sum(c or 0 for _, c in stages.values())

    _, full, _ = run(on_ray)
    noop_wall, noop, noop_calls = run(on_ray)
    write_manifest(corpus, texts[: n + step])
    _, delta, delta_calls = run(on_ray)
    local = write_config(tmp / "local", corpus, work, extra=FOUNDATION_ONLY + "embed:\n  local_below: 1000\n")
    write_manifest(corpus, texts)
    _, delta_local, _ = run(local)
    print(f"BENCH refresh noop_fraction={noop / full:.4f} delta1pct_fraction={delta / full:.4f} "
          f"noop_model_calls={noop_calls} startup_s={noop_wall - noop:.1f} "
          f"delta1pct_fraction_local={delta_local / full:.4f} full_stage_s={full:.1f} "
          f"delta_model_calls={delta_calls} n={n}", flush=True)


def main() -> None:
    from prefect.testing.utilities import prefect_test_harness

    from tasks.runtime.ray_session import ray_session

    with tempfile.TemporaryDirectory() as d, prefect_test_harness(server_startup_timeout=120), ray_session():
        tmp = Path(d)
        if os.environ.get("BENCH_EMBED_N", "1") != "0":
            bench_embed_flow(tmp, int(os.environ.get("BENCH_EMBED_N", 10_000)))
        bench_refresh(tmp, int(os.environ.get("BENCH_REFRESH_N", 20_000)))


if __name__ == "__main__":
    main()
