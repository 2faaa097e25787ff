"""The build flow against a real `prefect server start` on 127.0.0.1, checked through its API."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO
from tests.test_build_flow import make_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_UI_ENABLED="false")
    env.pop("PREFECT_API_KEY", None)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_build_against_a_real_prefect_server(prefect_server, tmp_path):
    url, env = prefect_server
    config = make_config(tmp_path)
    run = subprocess.run([sys.executable, "-m", "flows.cli", "build", "--config", str(config)],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Starting temporary server" not in run.stdout + run.stderr  # it used our server

    flow_runs = httpx.post(f"{url}/flow_runs/filter", json={}, timeout=10).json()
    assert [(fr["name"].startswith("sample "), fr["state_type"]) for fr in flow_runs] == [(True, "COMPLETED")]
    flow_run_id = flow_runs[0]["id"]
    flows = httpx.post(f"{url}/flows/filter", json={}, timeout=10).json()
    assert [f["name"] for f in flows] == ["build"]
    task_runs = httpx.post(f"{url}/task_runs/filter",
                           json={"flow_runs": {"id": {"any_": [flow_run_id]}}}, timeout=10).json()
    names = {tr["task_key"].split("-")[0]: tr["state_type"] for tr in task_runs}
    by_name = {tr["name"].rsplit("-", 1)[0]: tr["state_type"] for tr in task_runs}
    assert by_name.get("ingest") == "COMPLETED" and by_name.get("embed_text") == "COMPLETED", (names, by_name)
    artifacts = httpx.post(f"{url}/artifacts/filter",
                           json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}, timeout=10).json()
    keys = {a["key"] for a in artifacts}
    assert {"sample-build-stages", "sample-build-quarantine"} <= keys
