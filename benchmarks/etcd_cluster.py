"""A 3-member etcd cluster on loopback: the anchor the KV benchmark measures beside mcpdb.

Debian's ``etcd-server`` (etcd 3.4) with its default timeouts (100 ms
heartbeat, 1 s election). Each member runs in its own process group with a
fresh data directory and free ports, and is killed at the end even if the
benchmark fails. Clients use etcd's JSON gateway, which is what wrk can
speak: etcd 3.4 serves it at ``/v3/kv/*`` (``/v3beta`` is the deprecated
alias).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

import httpx

from mcpdb.ops.localcluster import free_port


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdCluster:
    def __init__(self, data_dir: Path, size: int = 3) -> None:
        self.data_dir = data_dir
        self.names = [f"e{i}" for i in range(1, size + 1)]
        self.client_ports = {n: free_port() for n in self.names}
        self.peer_ports = {n: free_port() for n in self.names}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.client_ports[name]}"

    def urls(self) -> list[str]:
        return [self.url(n) for n in self.names]

    def start(self, name: str) -> None:
        initial = ",".join(f"{n}=http://127.0.0.1:{self.peer_ports[n]}" for n in self.names)
        member_dir = self.data_dir / name
        state = "existing" if member_dir.exists() else "new"
        log = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept open while it runs
        self.processes[name] = subprocess.Popen(
            [
                "etcd",
                "--name",
                name,
                "--data-dir",
                str(member_dir),
                "--listen-client-urls",
                self.url(name),
                "--advertise-client-urls",
                self.url(name),
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.peer_ports[name]}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.peer_ports[name]}",
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "mcpdb-bench",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def start_all(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            self.start(name)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for name in names or self.names:
            while True:
                try:
                    if httpx.get(self.url(name) + "/health", timeout=1).json().get("health") == "true":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd member {name} not healthy")
                time.sleep(0.1)

    def leader(self, timeout: float = 10) -> str:
        """Name of the member that says it leads."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in self.names:
                if self.processes[name].poll() is not None:
                    continue
                try:
                    status = httpx.post(self.url(name) + "/v3/maintenance/status", json={}, timeout=2).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if status.get("leader") == status["header"]["member_id"]:
                    return name
            time.sleep(0.1)
        raise TimeoutError(f"no etcd leader within {timeout:g} s")

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def version() -> str:
    """``etcd --version``'s first line, recorded with the results."""
    return subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
