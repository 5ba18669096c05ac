"""Start and control a cluster of real node processes on this machine.

One implementation serves ``mcpdb up``, the integration tests, the
benchmarks and the fault-injection harness. Each node runs in its own
session (process group), so the owner can signal it - kill -9, SIGSTOP,
SIGTERM - without touching itself, and ``stop_all`` leaves nothing running.

The layout is written to ``cluster.json`` in the data directory: a second
start on the same directory reuses the same ids and addresses (Raft
identifies members by address), which is what brings the data back.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

LAYOUT_FILE = "cluster.json"


_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST_PORT = 10000
_handed_out: set[int] = set()
_handing_out = threading.Lock()


def _ephemeral_floor() -> int:
    try:
        with open(_EPHEMERAL_RANGE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, below the kernel's ephemeral range.

    A port the kernel hands out for binding to 0 comes from the range it also
    gives outgoing connections, so between picking it and the node binding it
    a connection (the tests and nodes open many) can take it: "address already
    in use". Ports below that range are only ever taken by an explicit bind.
    A port this process handed out once is never handed out again: two picks
    made before either node binds (a layout holds six) would otherwise collide
    about once in a thousand clusters, and a node whose Raft port is taken
    stops after a few seconds of retries.
    """
    floor = _ephemeral_floor()
    with _handing_out:
        for _ in range(200):
            port = random.randrange(_LOWEST_PORT, max(floor, _LOWEST_PORT + 1000))
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # crowded: let the kernel choose
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        _handed_out.add(port)
        return port


@dataclass
class NodeSpec:
    node_id: str
    http_addr: str
    raft_addr: str | None
    voter: bool = True
    args: list[str] = field(default_factory=list)  # this node's own flags, after the layout's

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"


@dataclass
class ClusterLayout:
    nodes: list[NodeSpec]
    extra_args: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, size: int, host: str = "127.0.0.1", base_port: int | None = None) -> ClusterLayout:
        """``size`` voters on ``host``: HTTP on base_port+i and Raft on base_port+100+i, or free ports."""
        nodes = []
        for i in range(1, size + 1):
            http_port = base_port + i - 1 if base_port else free_port(host)
            raft_port = base_port + 100 + i - 1 if base_port else free_port(host)
            nodes.append(NodeSpec(f"n{i}", f"{host}:{http_port}", f"{host}:{raft_port}"))
        return cls(nodes)

    def save(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / LAYOUT_FILE).write_text(
            json.dumps({"nodes": [asdict(n) for n in self.nodes], "extra_args": self.extra_args}, indent=2)
        )

    @classmethod
    def load(cls, data_dir: Path) -> ClusterLayout | None:
        path = data_dir / LAYOUT_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls([NodeSpec(**n) for n in raw["nodes"]], raw.get("extra_args", []))


class LocalCluster:
    """Node processes of one layout under one data directory."""

    def __init__(
        self,
        layout: ClusterLayout,
        data_dir: Path,
        env: dict[str, str] | None = None,
        token: str | None = None,
        wrap_command: Callable[[str, list[str]], list[str]] | None = None,
    ) -> None:
        """``wrap_command(node_id, argv)`` may prefix a node's command (e.g. ``ip netns exec``)."""
        self.layout = layout
        self.data_dir = data_dir
        self.env = env
        self.token = token
        self.wrap_command = wrap_command
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: dict[str, Any] = {}

    # ------------------------------------------------------------ lifecycle
    def spec(self, node_id: str) -> NodeSpec:
        return next(n for n in self.layout.nodes if n.node_id == node_id)

    def command(self, spec: NodeSpec) -> list[str]:
        voters = [n.raft_addr for n in self.layout.nodes if n.voter and n.raft_addr]
        args = [
            sys.executable,
            "-m",
            "mcpdb.node",
            "start",
            "--id",
            spec.node_id,
            "--data-dir",
            str(self.data_dir / spec.node_id),
            "--http-addr",
            spec.http_addr,
        ]
        if spec.voter:
            args += ["--raft-addr", str(spec.raft_addr)]
        else:
            args += ["--replica"]
        for peer in voters:
            if peer != spec.raft_addr:
                args += ["--peer", peer]
        args += self.layout.extra_args + spec.args
        if "--threads" not in args:
            args += ["--threads", str(self.threads_per_node())]
        return args

    def threads_per_node(self) -> int:
        """The nodes of a local cluster share this machine's cores: llama.cpp threads beyond them
        spin against each other (measured, 3 nodes x 2 threads on 2 cores: about 2 tokens/s each
        while all generate; 1 thread each: about 15)."""
        return max(1, len(os.sched_getaffinity(0)) // len(self.layout.nodes))

    def log_path(self, node_id: str) -> Path:
        """Where the node's output goes (appended to across restarts)."""
        return self.data_dir / node_id / "node.log"

    def start(self, node_id: str) -> None:
        spec = self.spec(node_id)
        if node_id in self.processes and self.processes[node_id].poll() is None:
            raise RuntimeError(f"{node_id} is already running")
        (self.data_dir / node_id).mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(node_id), "ab")  # noqa: SIM115 - kept open while it runs
        self._log_files[node_id] = log
        env = {**os.environ, **(self.env or {})}
        if self.token:
            env["MCPDB_TOKEN"] = self.token
        argv = self.command(spec)
        if self.wrap_command is not None:
            argv = self.wrap_command(node_id, argv)
        self.processes[node_id] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )

    def start_all(self) -> None:
        self.layout.save(self.data_dir)
        for spec in self.layout.nodes:
            self.start(spec.node_id)

    def signal(self, node_id: str, sig: int) -> None:
        process = self.processes.get(node_id)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, sig)

    def kill(self, node_id: str) -> None:
        """kill -9: no shutdown code runs, like a crash."""
        self.signal(node_id, signal.SIGKILL)
        self._reap(node_id, 10)

    def stop(self, node_id: str, timeout: float = 15) -> None:
        """Graceful stop (SIGTERM); escalates to SIGKILL after ``timeout``."""
        self.signal(node_id, signal.SIGCONT)
        self.signal(node_id, signal.SIGTERM)
        if not self._reap(node_id, timeout):
            self.kill(node_id)

    def pause(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGCONT)

    def _reap(self, node_id: str, timeout: float) -> bool:
        process = self.processes.get(node_id)
        if process is None:
            return True
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        log = self._log_files.pop(node_id, None)
        if log is not None:
            log.close()
        return True

    def stop_all(self, graceful: bool = True) -> None:
        for node_id in list(self.processes):
            if graceful:
                self.stop(node_id)
            else:
                self.kill(node_id)

    def running(self, node_id: str) -> bool:
        process = self.processes.get(node_id)
        return process is not None and process.poll() is None

    # ------------------------------------------------------------ observation
    def client(self, timeout: float = 2.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(timeout=timeout, headers=headers)

    def node_status(self, node_id: str) -> dict[str, Any] | None:
        try:
            with self.client(1.0) as http:
                response = http.get(self.spec(node_id).url + "/v1/node")
                return response.json() if response.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def leader(self) -> str | None:
        """Id of the highest-term node that says it leads, if a majority of voters follow it."""
        statuses = {n.node_id: self.node_status(n.node_id) for n in self.layout.nodes if self.running(n.node_id)}
        claims = [(s["term"], node_id) for node_id, s in statuses.items() if s and s["role"] == "leader"]
        if not claims:
            return None
        _, node_id = max(claims)
        address = self.spec(node_id).raft_addr
        followers = sum(1 for s in statuses.values() if s and s.get("leader") == address)
        voters = sum(1 for n in self.layout.nodes if n.voter)
        return node_id if followers * 2 > voters else None

    def wait_ready(self, timeout: float = 30, nodes: list[str] | None = None) -> str:
        """Wait for an agreed leader and every running node's /readyz; returns the leader id."""
        deadline = time.monotonic() + timeout
        wanted = nodes or [n.node_id for n in self.layout.nodes if self.running(n.node_id)]
        while time.monotonic() < deadline:
            for node_id in wanted:
                if not self.running(node_id):
                    raise RuntimeError(f"{node_id} exited; see {self.log_path(node_id)}")
            leader = self.leader()
            if leader and all(self._ready(n) for n in wanted):
                return leader
            time.sleep(0.1)
        reasons = "; ".join(f"{node_id}: {self._readiness(node_id)[1]}" for node_id in wanted)
        raise TimeoutError(f"cluster not ready within {timeout:g} s (leader {self.leader()}; {reasons})")

    def wait_models(self, timeout: float = 120) -> dict[str, dict[str, Any]]:
        """Wait until every node's model is loaded (or inference is disabled there) and registered, so
        the scheduler and ``/v1/models`` know it; returns each node's inference status. A model that
        failed to load raises RuntimeError at once."""
        deadline = time.monotonic() + timeout
        while True:
            status = {
                spec.node_id: (self.node_status(spec.node_id) or {}).get("inference", {}) for spec in self.layout.nodes
            }
            states = {node: info.get("state", "unreachable") for node, info in status.items()}
            failed = [f"{node}: {state}" for node, state in states.items() if state.startswith("failed")]
            if failed:
                raise RuntimeError("model failed to load: " + "; ".join(failed))
            loaded = {node for node, state in states.items() if state == "ready"}
            if all(state in ("ready", "disabled") for state in states.values()) and self._serving() == loaded:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"models not loaded within {timeout:g} s: {states}")
            time.sleep(0.5)

    def _serving(self) -> set[str]:
        """The nodes the replicated registry lists as serving a model (``/v1/models``)."""
        running = [spec.url for spec in self.layout.nodes if self.running(spec.node_id)]
        try:
            with self.client(1.0) as http:
                models = http.get(running[0] + "/v1/models").json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return set()
        return {node for model in models for node in model["nodes"]}

    def _ready(self, node_id: str) -> bool:
        return self._readiness(node_id)[0]

    def _readiness(self, node_id: str) -> tuple[bool, str]:
        """Whether the node's /readyz answers 200, and the reason it gives (for a timeout's message)."""
        try:
            with self.client(1.0) as http:
                response = http.get(self.spec(node_id).url + "/readyz")
        except httpx.HTTPError:
            return False, "no answer from /readyz"
        try:
            reason = str(response.json()["reason"])
        except (ValueError, KeyError):
            reason = f"/readyz answered {response.status_code}"
        return response.status_code == 200, reason

    def urls(self) -> list[str]:
        return [n.url for n in self.layout.nodes]

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all(graceful=False)
