"""A real two-node Ray cluster on this machine: `ray start --head` on 127.0.0.1 with no CPUs, and a
second node with the CPUs, so every model actor, Ray Data task and build task must run on the
second node. A build that joins it through RAY_ADDRESS must publish exactly what a local build
publishes, its driver must stay small, and `ray stop` must leave nothing running.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.stops_ray

from tests.conftest import REPO
from tests.test_build_flow import make_config

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
DRIVER = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, {repo!r})
    from flows.build import build
    result = build(config_path={config!r})
    print("RESULT " + json.dumps({{"datasets": result["datasets"], "run_id": result["run_id"],
                                   "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict) -> None:
    proc = subprocess.run([*RAY, *args], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _cluster_processes(temp_dir: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if temp_dir in cmd:
            found.append(f"{p.info['pid']}: {cmd[:160]}")
    return found


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    temp_dir = str(tmp_path_factory.mktemp("ray-cluster"))
    port = _free_port()
    import secrets

    # an authenticated cluster: nodes and drivers share a token (Ray refuses a node that has none)
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                        "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        _ray("start", "--head", "--port", str(port), "--num-cpus", "0", "--num-gpus", "0", "--temp-dir", temp_dir,
             "--include-dashboard", "false", *common, env=env)
        _ray("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--num-gpus", "0",
             "--resources", json.dumps({"second_node": 1}), *common, env=env)
        yield f"127.0.0.1:{port}", temp_dir, env
    finally:
        subprocess.run([*RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _build(config, env: dict) -> dict:
    from prefect.settings import PREFECT_API_URL

    env = env | {"PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(repo=str(REPO), config=str(config))], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _content(catalog: str) -> dict:
    """Every current dataset's rows, sorted, vectors rounded: what a build published, whatever the
    shard layout (a version's hash follows its shards, and the workers' shards differ between runs)."""
    import numpy as np

    from tasks.runtime.catalog import Catalog
    from tasks.runtime.publish import read

    cat = Catalog(catalog)
    out = {}
    for name in sorted(cat.current_all()):
        rows = read(cat, cat.data_root(), name).to_pylist()
        for r in rows:
            if r.get("vector") is not None:
                r["vector"] = tuple(np.round(np.asarray(r["vector"], np.float64), 4).tolist())
        out[name] = sorted(repr(sorted(r.items())) for r in rows)
    return out


def test_a_build_on_a_two_node_cluster_equals_a_local_build(prefect_harness, two_nodes, tmp_path):
    address, temp_dir, env = two_nodes
    overrides = dict(judge={"enabled": False}, tree={"enabled": False},
                     index={"task": {"local_below": 0}}, negatives={"task": {"local_below": 0}})
    cluster_cfg = make_config(tmp_path / "cluster", **overrides)
    local_cfg = make_config(tmp_path / "local", **overrides)
    on_cluster = _build(cluster_cfg, env | {"RAY_ADDRESS": address})
    local = _build(local_cfg, {k: v for k, v in env.items() if k != "RAY_ADDRESS"})

    cluster_catalog = str(tmp_path / "cluster" / "work" / "catalog.duckdb")
    assert _content(cluster_catalog) == _content(str(tmp_path / "local" / "work" / "catalog.duckdb"))
    assert on_cluster["datasets"] == local["datasets"]

    from tasks.runtime.catalog import Catalog

    stages = {r["stage"]: r for r in Catalog(cluster_catalog).query(
        "SELECT stage, peak_memory_mb, message FROM stage_runs WHERE run_id = ?", [on_cluster["run_id"]]).to_pylist()}
    assert stages["index"]["peak_memory_mb"] and stages["negatives"]["peak_memory_mb"]  # built in tasks, measured
    # the driver holds the plumbing, never the corpus: it stays within what a local driver needs
    assert on_cluster["peak_mb"] < local["peak_mb"] * 1.25, (on_cluster["peak_mb"], local["peak_mb"])


def test_ray_stop_leaves_nothing_running(two_nodes):
    import ray

    address, temp_dir, env = two_nodes
    ray.shutdown()  # `ray stop` ends every Ray on the machine, this session's local one too
    assert _cluster_processes(temp_dir)  # the cluster's processes carry its temp dir
    subprocess.run([*RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
    deadline = time.monotonic() + 30
    while _cluster_processes(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _cluster_processes(temp_dir) == []
