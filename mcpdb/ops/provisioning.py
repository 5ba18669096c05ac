"""Acting on the autoscaler's decisions: a provisioner starts and stops inference workers.

The leader decides how many workers there should be (``GET /v1/autoscale``);
a ``ScaleController`` polls that and asks a ``Provisioner`` to converge.
``LocalProvisioner`` runs workers as node processes on this machine: each
joins as a non-voting replica with an inference worker (it receives the log
and serves reads and generations without weighing on consensus), and leaves
cleanly: drained first (``POST /v1/node/drain``: no new work, in-flight
requests finish), then stopped with SIGTERM (a replica deregisters itself on
the way out). ``KubernetesProvisioner`` sets the replica count of the
workers' Deployment through the Kubernetes API; there each pod drains itself
in a preStop hook (deploy/README.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Protocol

import httpx

from mcpdb.client import Client, McpdbError
from mcpdb.ops.localcluster import LocalCluster, NodeSpec, free_port

DRAIN_TIMEOUT_S = 60.0


class Provisioner(Protocol):
    def running(self) -> int:
        """Workers this provisioner runs (or has asked for)."""

    def scale_to(self, count: int) -> str:
        """Start or stop workers until ``count`` run (stopping drains first); says what it did."""


def threads_per_worker(max_workers: int) -> int:
    """llama.cpp threads for each of up to ``max_workers`` local workers sharing this machine's cores
    (threads beyond the cores spin against each other)."""
    return max(1, len(os.sched_getaffinity(0)) // max_workers)


class LocalProvisioner:
    """Worker node processes next to a LocalCluster's voters, sharing its data directory."""

    def __init__(self, cluster: LocalCluster, worker_args: list[str], host: str = "127.0.0.1") -> None:
        self._cluster = cluster
        self._worker_args = worker_args
        self._host = host
        self._started: list[str] = []
        self._serial = 0

    def workers(self) -> list[str]:
        """Node ids of the workers, oldest first."""
        return list(self._started)

    def running(self) -> int:
        return len(self._started)

    def scale_to(self, count: int) -> str:
        done = []
        while len(self._started) < count:
            done.append(f"started {self.add()}")
        while len(self._started) > count:
            newest = self._started[-1]
            self.remove(newest)
            done.append(f"drained and stopped {newest}")
        return ", ".join(done)

    def add(self) -> str:
        self._serial += 1
        taken = {spec.node_id for spec in self._cluster.layout.nodes}
        while f"w{self._serial}" in taken:
            self._serial += 1
        spec = NodeSpec(
            f"w{self._serial}", f"{self._host}:{free_port(self._host)}", None, voter=False, args=list(self._worker_args)
        )
        self._cluster.layout.nodes.append(spec)
        self._cluster.start(spec.node_id)
        self._started.append(spec.node_id)
        return spec.node_id

    def remove(self, node_id: str) -> None:
        spec = self._cluster.spec(node_id)
        try:
            with self._cluster.client(timeout=DRAIN_TIMEOUT_S + 5) as http:
                # A bodyless POST declares JSON (the node's guard against cross-site form posts).
                http.post(
                    spec.url + "/v1/node/drain",
                    params={"timeout": DRAIN_TIMEOUT_S},
                    headers={"Content-Type": "application/json"},
                )
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
        """Start workers up to the desired count at once, or stop one (then look again); says what it did."""
        try:
            status = self._client.autoscale()
        except McpdbError:
            return None
        desired = status.get("desired")
        try:
            running = self._provisioner.running()
        except (httpx.HTTPError, OSError) as error:
            return f"could not read the worker count: {type(error).__name__}: {error}"
        self.history.append((time.time(), desired if desired is not None else running, running))
        if desired is None or desired == running:
            return None
        utilisation = status.get("utilisation")
        why = (
            f"{status.get('reason')}, utilisation {utilisation:.2f}"
            if utilisation is not None
            else status.get("reason")
        )
        try:
            return f"{self._provisioner.scale_to(desired if desired > running else running - 1)} ({why})"
        except (httpx.HTTPError, OSError) as error:  # the next step tries again
            return f"could not scale to {desired}: {type(error).__name__}: {error}"


class KubernetesProvisioner:
    """The workers' Deployment, scaled through the API server's ``scale`` subresource.

    Runs inside the cluster with the pod's service account (deploy/autoscaler.yaml grants it get and
    patch on deployments/scale); each worker pod drains itself in its preStop hook, so scaling down
    loses no request. Not exercised here (no Kubernetes on this machine).
    """

    SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

    def __init__(
        self,
        deployment: str,
        namespace: str | None = None,
        api_url: str = "https://kubernetes.default.svc",
        http: httpx.Client | None = None,
    ) -> None:
        self._namespace = namespace or (self.SERVICE_ACCOUNT / "namespace").read_text().strip()
        self._url = f"{api_url}/apis/apps/v1/namespaces/{self._namespace}/deployments/{deployment}/scale"
        self._http = http or httpx.Client(
            verify=str(self.SERVICE_ACCOUNT / "ca.crt"),
            timeout=10,
            headers={"Authorization": f"Bearer {(self.SERVICE_ACCOUNT / 'token').read_text().strip()}"},
        )

    def running(self) -> int:
        response = self._http.get(self._url)
        response.raise_for_status()
        return int(response.json()["spec"].get("replicas", 0))

    def scale_to(self, count: int) -> str:
        response = self._http.patch(
            self._url,
            content=json.dumps({"spec": {"replicas": count}}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()
        return f"set {self._url.rsplit('/', 2)[-2]} replicas to {count}"
