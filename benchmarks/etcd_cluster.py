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
import shutil
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
    def __init__(self, data_dir: Path, size: int = 3, extra_args: list[str] | None = None) -> None:
        """``extra_args`` are given to every member (quota, snapshot count, txn size)."""
        self.data_dir = data_dir
        self.extra_args = extra_args or []
        self.names = [f"e{i}" for i in range(1, size + 1)]
        self.client_ports = {n: free_port() for n in self.names}
        self.peer_ports = {n: free_port() for n in self.names}
        self.metrics_ports = {n: free_port() for n in self.names}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.client_ports[name]}"

    def urls(self) -> list[str]:
        return [self.url(n) for n in self.names]

    def peer_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.peer_ports[name]}"

    def metrics_url(self, name: str) -> str:
        """/metrics and /health on a listener of their own, served from the start: a member that is
        still joining serves no client requests (its client URL opens once it has published itself)."""
        return f"http://127.0.0.1:{self.metrics_ports[name]}"

    def member_dir(self, name: str) -> Path:
        return self.data_dir / name

    def start(self, name: str, state: str | None = None) -> None:
        """Start a member; ``state`` is its --initial-cluster-state (default: existing once it has data)."""
        initial = ",".join(f"{n}={self.peer_url(n)}" for n in self.names)
        member_dir = self.member_dir(name)
        state = state or ("existing" if member_dir.exists() else "new")
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
                "--listen-metrics-urls",
                self.metrics_url(name),
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                *self.extra_args,
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

    def stop(self, name: str, timeout: float = 15) -> None:
        """Graceful stop (SIGTERM); escalates to SIGKILL after ``timeout``."""
        os.killpg(self.processes[name].pid, signal.SIGTERM)
        try:
            self.processes[name].wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(name)

    def replace(self, name: str) -> None:
        """Stop a member, wipe its data and bring it back empty under a new member id.

        etcd takes a wiped member back only as a new member: one restarted with
        its old id and no log panics when the leader's commit index is beyond
        its empty log. So, as etcd's runbook says: member remove, member add,
        start with ``--initial-cluster-state existing``.
        """
        survivor = self.url(next(n for n in self.names if n != name))
        members = httpx.post(survivor + "/v3/cluster/member/list", json={}, timeout=5).json()["members"]
        member_id = next(m["ID"] for m in members if self.peer_url(name) in m.get("peerURLs", []))
        self.stop(name)
        httpx.post(survivor + "/v3/cluster/member/remove", json={"ID": member_id}, timeout=10).raise_for_status()
        shutil.rmtree(self.member_dir(name))
        # Right after a removal etcd refuses to add a voter (503 "unhealthy cluster") until every member
        # has been connected for its health interval (5 s).
        deadline = time.monotonic() + 30
        while True:
            added = httpx.post(
                survivor + "/v3/cluster/member/add", json={"peerURLs": [self.peer_url(name)]}, timeout=10
            )
            if added.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        added.raise_for_status()
        self.start(name, state="existing")

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
