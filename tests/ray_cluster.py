"""A real two-node Ray cluster on loopback for tests: a head on 127.0.0.2 and a worker node on
127.0.0.3 (Ray rewrites 127.0.0.1 to the machine's address, so a node there would not join).

Invariant: the cluster's processes are found by a marker in their environment (inherited by every
process that `ray start` spawns, renamed agents and workers included), and only those are stopped, by PID (never `ray stop`, which kills every Ray process on the machine); every
wait is bounded. Use the `loopback_cluster` fixture (import it into the test module), or
`LoopbackCluster` directly:

    with LoopbackCluster(head_cpus=1, worker_cpus=1) as cluster:
        run(["snncc", "eval", ..., "--ray", cluster.address], env={**os.environ, **cluster.client_env})
        cluster.kill_worker_raylet()   # the worker node dies (its raylet, by PID)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
START_SECONDS = 90
RAY = Path(sys.executable).with_name("ray")
OBJECT_STORE_BYTES = 200 * 2**20
MARKER = "SNNCC_LOOPBACK_CLUSTER"


def free_port(host: str = HEAD_IP) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """Head (127.0.0.2) + one worker node (127.0.0.3), each with its CPU count; see the module doc."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1):
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        # short: Ray's socket paths live under it and must stay below the 107-byte limit
        self.temp_dir = Path(tempfile.mkdtemp(prefix="snr", dir="/tmp"))
        self.marker = f"{MARKER}={self.temp_dir}"
        # token authentication with a token of its own: clients need `client_env`
        self.client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", MARKER: str(self.temp_dir), **self.client_env}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)

    def _start(self, args: list[str]) -> None:
        command = [str(RAY), "start", "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE_BYTES}", *args]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=START_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def start(self) -> LoopbackCluster:
        self._start(["--head", f"--node-ip-address={HEAD_IP}", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                     f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"])
        self._start([f"--address={self.address}", f"--node-ip-address={WORKER_IP}", f"--num-cpus={self.worker_cpus}",
                     f"--dashboard-agent-listen-port={free_port(WORKER_IP)}"])
        return self

    def pids(self) -> dict[int, str]:
        """PID -> command line of every process of this cluster."""
        marker = self.marker.encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
        found.pop(os.getpid(), None)
        return found

    def worker_raylet_pid(self) -> int:
        (pid,) = [p for p, cmd in self.pids().items()
                  if "/raylet/raylet " in cmd and f"--node_ip_address={WORKER_IP}" in cmd]
        return pid

    def kill_worker_raylet(self) -> int:
        """SIGKILL the worker node's raylet: that node is lost with the actors on it."""
        pid = self.worker_raylet_pid()
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        """SIGKILL this cluster's processes (by PID, twice over: some fork while dying); remove its folder."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LoopbackCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def loopback_cluster():
    """A fresh two-node loopback cluster (1 CPU per node), stopped after the test."""
    with LoopbackCluster() as cluster:
        yield cluster
