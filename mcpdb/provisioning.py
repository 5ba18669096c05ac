"""Acting on the autoscaler's decisions: a provisioner starts and stops inference workers.

The leader decides how many workers there should be (``GET /v1/autoscale``);
a ``ScaleController`` polls that and asks a ``Provisioner`` to converge.
``LocalProvisioner`` runs workers as node processes on this machine: each
joins as a non-voting replica with an inference worker (it receives the log
and serves reads and generations without weighing on consensus), and leaves
cleanly: drained first (``POST /v1/node/drain``: no new work, in-flight
requests finish), then stopped with SIGTERM (a replica deregisters itself on
the way out). On Kubernetes the same decision drives the workers'
Deployment (deploy/README.md).
"""

from __future__ import annotations

import time
from typing import Protocol

import httpx

from mcpdb.client import Client, McpdbError
from mcpdb.localcluster import LocalCluster, NodeSpec, free_port

DRAIN_TIMEOUT_S = 60.0


class Provisioner(Protocol):
    def workers(self) -> list[str]:
        """The workers this provisioner runs, oldest first."""

    def add(self) -> str:
        """Start one worker; returns its node id (it registers once its model has loaded)."""

    def remove(self, node_id: str) -> None:
        """Drain the worker, then stop it."""


class LocalProvisioner:
    """Worker node processes next to a LocalCluster's voters, sharing its data directory."""

    def __init__(self, cluster: LocalCluster, worker_args: list[str], host: str = "127.0.0.1") -> None:
        self._cluster = cluster
        self._worker_args = worker_args
        self._host = host
        self._started: list[str] = []
        self._serial = 0

    def workers(self) -> list[str]:
        return list(self._started)

    def add(self) -> str:
        self._serial += 1
        taken = {spec.node_id for spec in self._cluster.layout.nodes}
        while f"w{self._serial}" in taken:
            self._serial += 1
        spec = NodeSpec(f"w{self._serial}", f"{self._host}:{free_port(self._host)}", None, voter=False,
                        args=list(self._worker_args))
        self._cluster.layout.nodes.append(spec)
        self._cluster.start(spec.node_id)
        self._started.append(spec.node_id)
        return spec.node_id

    def remove(self, node_id: str) -> None:
        spec = self._cluster.spec(node_id)
        try:
            with self._cluster.client(timeout=DRAIN_TIMEOUT_S + 5) as http:
                http.post(spec.url + "/v1/node/drain", params={"timeout": DRAIN_TIMEOUT_S})
        except httpx.HTTPError:
            pass  # unreachable: nothing to drain from it
        self._cluster.stop(node_id)
        self._started.remove(node_id)
        self._cluster.layout.nodes.remove(spec)


class ScaleController:
    """Converges a provisioner on the leader's desired worker count, one step per call."""

    def __init__(self, client: Client, provisioner: Provisioner) -> None:
        self._client = client
        self._provisioner = provisioner
        self.history: list[tuple[float, int, int]] = []  # (time, desired, running)

    def step(self) -> str | None:
        """Add workers up to the desired count, or remove one (the newest); returns what it did."""
        try:
            status = self._client.autoscale()
        except McpdbError:
            return None
        desired = status.get("desired")
        running = self._provisioner.workers()
        self.history.append((time.time(), desired if desired is not None else len(running), len(running)))
        if desired is None or desired == len(running):
            return None
        utilisation = status.get("utilisation")
        why = f"{status.get('reason')}, utilisation {utilisation:.2f}" if utilisation is not None else status.get("reason")
        if desired > len(running):
            added = [self._provisioner.add() for _ in range(desired - len(running))]
            return f"started {', '.join(added)} ({why})"
        newest = running[-1]
        self._provisioner.remove(newest)
        return f"drained and stopped {newest} ({why})"
