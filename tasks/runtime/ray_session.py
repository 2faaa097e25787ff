"""Ray session handling: local by default, RAY_ADDRESS for a cluster, GPUs only when present.

Ray waits forever for resources a cluster does not have, so a stage asks `gpus_for(device)`
first: `auto` takes a GPU only where the cluster has one, `cuda` on a GPU-less cluster fails
at once with a message that says what to change.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Iterator

log = logging.getLogger(__name__)


class ResourceUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Join RAY_ADDRESS / the configured cluster, or start local Ray; shut down what we started."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS") or address
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  configure_logging=False)
    if address:
        log.info("joining Ray cluster at %s", address)
        _reachable(address)
        ray.init(address=address, **kwargs)
    else:
        # local Ray binds its GCS, raylet and object manager to loopback: nothing listens outside.
        # Its processes (and every worker they fork) inherit the environment at this moment, so
        # API keys are out of it while Ray starts: model-API calls run in the driver only.
        with without_secrets(), _loopback_node(os.environ.get("CORPUSFORGE_RAY_NODE_IP", "127.0.0.1")) as ip:
            ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=_local_gpus(), _node_ip_address=ip, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _loopback_node(ip: str) -> Iterator[str]:
    """Make a local Ray node really use `ip`. ray.init turns a loopback `_node_ip_address` into the
    host's routable address (and its gRPC servers then listen on every interface) unless Ray thinks
    it runs single-node, as it does on macOS and Windows; say so for the start-up only."""
    from ray._private import ray_constants

    if ip not in ("127.0.0.1", "localhost", "::1"):
        yield ip
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield ip
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


# names of environment variables that hold API keys and tokens; object-store credentials (AWS_*,
# GOOGLE_*, AZURE_*) stay, since workers read and write shards on the data root themselves
_SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
_STORAGE = ("AWS_", "GOOGLE_", "AZURE_", "CORPUSFORGE_")


def secret_names(environ=None) -> list[str]:
    environ = os.environ if environ is None else environ
    return sorted(k for k in environ if _SECRET_NAME.search(k) and not k.upper().startswith(_STORAGE))


@contextlib.contextmanager
def without_secrets() -> Iterator[None]:
    """Take API keys out of os.environ for the block (the processes it starts inherit none), then
    put them back for the driver."""
    saved = {k: os.environ.pop(k) for k in secret_names()}
    try:
        yield
    finally:
        os.environ.update(saved)


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable GCS for minutes; a host:port that refuses within seconds fails now."""
    import socket

    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ResourceUnavailable(
            f"no Ray cluster answers at RAY_ADDRESS={address} ({e}). Start one (`ray start --head "
            "--node-ip-address 127.0.0.1`) or unset RAY_ADDRESS to run on local Ray.") from None


def _local_gpus() -> int:
    """CUDA devices torch can use here. torch's import (about 2 s) is skipped on a machine with no
    NVIDIA driver, where the answer is 0 whatever torch says."""
    if not _nvidia_driver():
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch, no GPU
        return 0


def _nvidia_driver() -> bool:
    """Whether this machine could have a CUDA device: on Linux an NVIDIA driver (or WSL's GPU
    device) is loaded; macOS never has one; elsewhere ask torch."""
    import sys

    if sys.platform == "darwin":
        return False
    if not sys.platform.startswith("linux"):
        return True
    gpus = "/proc/driver/nvidia/gpus"
    return (os.path.isdir(gpus) and bool(os.listdir(gpus))) or any(
        os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))


def quiet_ray_data() -> None:
    """Ray Data without its progress bars and start-up banner (ours report progress); called where
    a stage first builds a Ray Data pipeline, so a run that never does never imports it."""
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    with contextlib.suppress(AttributeError):
        ctx.enable_operator_progress_bars = False


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def gpus_for(device: str, stage: str, per_actor: float = 1.0) -> float:
    """GPUs to request per actor for a stage's device setting; fails fast when impossible."""
    available = cluster_gpus()
    if device == "cpu":
        return 0.0
    if device == "cuda":
        if available < per_actor:
            import ray

            where = os.environ.get("RAY_ADDRESS") or "the local Ray instance"
            raise ResourceUnavailable(
                f"stage '{stage}' is configured with device: cuda and needs {per_actor:g} GPU per actor, "
                f"but {where} has {available:g} GPUs (resources: {ray.cluster_resources()}). "
                "Set device: auto or cpu in the config, or point RAY_ADDRESS at a cluster with GPUs."
            )
        return per_actor
    return per_actor if available >= per_actor else 0.0


def torch_device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 else "cpu"
