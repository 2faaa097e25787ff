"""Local Ray as a build starts it: every socket its processes listen on is on loopback, and no
process of it (raylet, GCS, workers) has the API key in its environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = r"""
import json, os, sys
from tasks.runtime.ray_session import ray_session
import ray

with ray_session(num_cpus=1):
    @ray.remote
    def worker_env():
        return os.environ.get("CF_TEST_API_KEY"), os.getpid()

    key, worker_pid = ray.get(worker_env.remote())
    driver_key = os.environ.get("CF_TEST_API_KEY")

    def descendants(pid):
        out, todo = set(), [pid]
        while todo:
            p = todo.pop()
            try:
                kids = open(f"/proc/{p}/task/{p}/children").read().split()
            except OSError:
                kids = []
            for k in map(int, kids):
                if k not in out:
                    out.add(k)
                    todo.append(k)
        return out

    pids = descendants(os.getpid()) | {worker_pid}
    inodes, leaked = {}, []
    for p in pids:
        try:
            if b"CF_TEST_API_KEY" in open(f"/proc/{p}/environ", "rb").read():
                leaked.append(open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0].decode())
            for fd in os.listdir(f"/proc/{p}/fd"):
                link = os.readlink(f"/proc/{p}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = p
        except OSError:
            pass
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN, owned by a Ray process
                listening.append(f[1])
    print(json.dumps({"worker_key": key, "driver_key": driver_key, "leaked": leaked,
                      "listening": listening, "processes": len(pids)}))
"""



def is_loopback(proc_addr: str) -> bool:
    """A /proc/net/tcp{,6} local address (hex, host byte order per 32-bit word) on loopback?"""
    import ipaddress
    import struct

    raw = bytes.fromhex(proc_addr.split(":")[0])
    words = b"".join(struct.pack("<I", w) for w in struct.unpack(">" + "I" * (len(raw) // 4), raw))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_local_ray_listens_on_loopback_only_and_has_no_api_key():
    env = dict(os.environ, CF_TEST_API_KEY="sk-test-ray-must-not-see-this", RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["driver_key"] == "sk-test-ray-must-not-see-this"  # the driver keeps it for its API calls
    assert got["worker_key"] is None and got["leaked"] == []
    assert got["processes"] >= 3 and got["listening"]
    assert is_loopback("0100007F:1F90") and not is_loopback("00000000:1F90")
    wide = [a for a in got["listening"] if not is_loopback(a)]
    assert wide == [], f"Ray listens beyond loopback: {wide}"
