"""A real multi-node Ray cluster on this machine, for tests and benchmarks of `--ray-address`.

Each node is its own `ray start --block` process (GCS and raylet on the head, a raylet on each
worker node), all on 127.0.0.1, so Ray schedules across them exactly as across hosts (separate
raylets, node ids, resources), only the file system is shared. `stop()` ends exactly these
nodes and everything they started, never other Ray instances on the machine: `ray stop` would
kill every Ray process of the user, including other simulations. The cluster keeps its own
temp folder (`--temp-dir`), so Ray's `ray_current_cluster` file under the default /tmp/ray is
never written and no later `ray.init()` tries to join this cluster after it is gone (the hang
described in FLOWER.md).

    with LocalRayCluster([RayNode(1), RayNode(1, {"node2": 1})]) as cluster:
        fedmtl simulate ... --ray-address cluster.address
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from launch.processes import ENV_TAG, ProcessFamily, free_port
from launch.superlink import QUIET_ENV

__all__ = ["LocalRayCluster", "RayNode", "ray_bin"]


def ray_bin() -> Path | None:
    """This interpreter's `ray` command, None if Ray is not installed here."""
    path = Path(sys.executable).parent / "ray"
    return path if path.exists() else None


@dataclass
class RayNode:
    """One node: its logical CPUs, custom resources, and extra environment for its processes
    (Ray workers inherit their raylet's environment)."""

    num_cpus: int = 1
    resources: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


class LocalRayCluster:
    """`nodes[0]` is the head. Use as a context manager, or `start()` and (always) `stop()`."""

    def __init__(self, nodes: list[RayNode], object_store_bytes: int = 100 * 1024 * 1024,
                 startup_timeout_s: float = 120.0) -> None:
        if not nodes:
            raise ValueError("a cluster needs at least a head node")
        self.nodes = nodes
        self.object_store_bytes = object_store_bytes
        self.startup_timeout_s = startup_timeout_s
        self.tag = uuid.uuid4().hex
        self.family = ProcessFamily(self.tag)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port: int | None = None
        # Ray's socket paths must stay short (108 bytes): a short folder directly under /tmp.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rfm", dir="/tmp"))
        self.logs: list[Path] = []

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the cluster is not started")
        return f"127.0.0.1:{self.port}"

    def _command(self, i: int, node: RayNode) -> list[str]:
        ray = ray_bin()
        if ray is None:
            raise RuntimeError(f"ray is not installed next to {sys.executable}")
        cmd = [str(ray), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(node.num_cpus),
               "--num-gpus", "0", "--object-store-memory", str(self.object_store_bytes), "--disable-usage-stats",
               "--temp-dir", str(self.temp_dir)]
        if node.resources:
            cmd += ["--resources", json.dumps(node.resources)]
        if i == 0:
            cmd += ["--head", "--port", str(self.port), "--include-dashboard=false"]
        else:
            cmd += ["--address", self.address]
        return cmd

    def _env(self, node: RayNode) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(QUIET_ENV)
        env[ENV_TAG] = self.tag
        env.update(node.env)
        return env

    def start(self) -> LocalRayCluster:
        self.port = free_port("127.0.0.1")
        try:
            for i, node in enumerate(self.nodes):
                log = self.temp_dir / f"node{i}.log"
                self.logs.append(log)
                with open(log, "wb") as f:
                    self.procs.append(subprocess.Popen(self._command(i, node), stdin=subprocess.DEVNULL, stdout=f,
                                                       stderr=subprocess.STDOUT, env=self._env(node),
                                                       start_new_session=True))
                self._wait_started(i)
                self.family.scan([p.pid for p in self.procs])  # learn the nodes' sessions while intact
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_started(self, i: int) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        proc, log = self.procs[i], self.logs[i]
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "Ray runtime started" in text:
                return
            if proc.poll() is not None:
                raise RuntimeError(f"ray node {i} exited with {proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.3)
        raise RuntimeError(f"ray node {i} did not start within {self.startup_timeout_s:.0f}s:\n"
                           f"{log.read_text(errors='replace')[-3000:]}")

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.logs if p.exists())

    def stop(self) -> set[int]:
        """SIGTERM each `ray start --block` (it stops its node), worker nodes first; then kill
        whatever of the cluster is left. Returns pids that survived (normally none)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        left = self.family.kill([p.pid for p in self.procs if p.poll() is None], term_wait_s=3.0)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
