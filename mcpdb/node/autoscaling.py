"""The autoscaling duty of the leader, and ``GET /v1/autoscale`` / ``POST /v1/node/drain``.

Every second the leader turns its load board into an observation (live
workers, their slots, requests in flight or queued) and asks the policy
(mcpdb/inference/autoscale_policy.py) how many workers there should be. It only decides: a
provisioner acting on the decision polls ``/v1/autoscale`` (mcpdb/ops/provisioning.py
for local processes; deploy/ for Kubernetes). A new leader starts the policy
afresh, with a full cooldown, so a failover cannot cause a burst of changes.

A worker leaves cleanly: ``POST /v1/node/drain`` marks it draining in the
replicated registry (the scheduler stops assigning to it once the leader
applied that), waits for its in-flight and queued requests to finish, and
answers; then it can be stopped.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import httpx
from fastapi import FastAPI, Query

from mcpdb.inference.autoscale_policy import Autoscaler, Decision, Observation, ScalePolicy
from mcpdb.node.http.responses import error_response as error
from mcpdb.node.views import LeaderRole, NodeRegistry

if TYPE_CHECKING:
    from mcpdb.inference.llama_worker import Worker
    from mcpdb.inference.loadboard import LoadBoard
    from mcpdb.node.config import NodeConfig
    from mcpdb.node.internal.chat_front import ChatFront

PERIOD_S = 1.0


class HasBoard(Protocol):
    @property
    def board(self) -> LoadBoard: ...


class ScalingNode(Protocol):
    """What the duty reads of its node (NodeRuntime is one)."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def store(self) -> NodeRegistry: ...

    @property
    def replication(self) -> LeaderRole: ...

    @property
    def scheduler(self) -> HasBoard: ...


class DrainableNode(ScalingNode, Protocol):
    """What /v1/autoscale and /v1/node/drain use besides: the duty, the leader, the worker, the flag."""

    draining: bool

    @property
    def autoscale(self) -> AutoscaleDuty: ...

    @property
    def front(self) -> ChatFront: ...

    @property
    def worker(self) -> Worker | None: ...

    def http_client(self) -> httpx.AsyncClient: ...


class AutoscaleDuty:
    def __init__(self, runtime: ScalingNode, policy: ScalePolicy | None) -> None:
        self._runtime = runtime
        self.policy = policy
        self._scaler: Autoscaler | None = None
        self.observation: Observation | None = None
        self.decision: Decision | None = None

    def observe(self) -> Observation:
        board = self._runtime.scheduler.board
        live = [w for w in board.workers(self._runtime.store.nodes()) if w.alive]  # nodes serving a model
        return Observation(
            time.monotonic(), len(live), sum(w.slots for w in live), sum(board.reported_demand(w.node_id) for w in live)
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD_S)
            if self.policy is None or not self._runtime.replication.is_leader():
                self._scaler = None
                continue
            if self._scaler is None:
                self._scaler = Autoscaler(self.policy, started_at=time.monotonic())
            self.observation = self.observe()
            self.decision = self._scaler.observe(self.observation)

    def status(self) -> dict[str, Any]:
        if self.policy is None:
            return {"enabled": False}
        observation, decision = self.observation, self.decision
        return {
            "enabled": True,
            "leader": self._runtime.config.node_id,
            "policy": {
                "min": self.policy.min_workers,
                "max": self.policy.max_workers,
                "target_per_slot": self.policy.target_per_slot,
                "scale_down_below": self.policy.scale_down_below,
                "cooldown_s": self.policy.cooldown_s,
            },
            "desired": decision.desired if decision else None,
            "reason": decision.reason if decision else "starting",
            "utilisation": decision.utilisation if decision else None,
            "workers": observation.workers if observation else None,
            "demand": observation.demand if observation else None,
        }


def add_autoscale_routes(app: FastAPI, runtime: DrainableNode) -> None:
    @app.get("/v1/autoscale", tags=["operations"])
    async def autoscale() -> Any:
        """The leader's autoscaling decision: desired workers, live workers, utilisation, reason.
        Any node answers (a follower asks the leader)."""
        if runtime.replication.is_leader():
            return runtime.autoscale.status()
        url = runtime.front.leader_url()
        if url is None:
            return error(503, "unavailable", "no leader is known", retry_after=1)
        try:
            response = await runtime.http_client().get(url + "/v1/autoscale")
            return response.json()
        except (httpx.HTTPError, ValueError) as failure:
            return error(503, "unavailable", f"the leader did not answer: {failure}", retry_after=1)

    @app.post("/v1/node/drain", tags=["operations"])
    async def drain(timeout: Annotated[float, Query(gt=0, le=3600)] = 60.0) -> dict[str, Any]:
        """Stop taking inference work and wait for what this node is serving to finish (then stop it).
        Needs an admin token on '*'."""
        started = time.monotonic()
        runtime.draining = True
        worker = runtime.worker
        while time.monotonic() - started < timeout:
            registered = next((n for n in runtime.store.nodes() if n["id"] == runtime.config.node_id), None)
            marked = registered is None or registered.get("draining", False)
            load = worker.load_report() if worker is not None and worker.ready else {"in_flight": 0, "queued": 0}
            idle = load["in_flight"] + load["queued"] == 0
            if marked and idle:
                return {
                    "node": runtime.config.node_id,
                    "drained": True,
                    "waited_s": round(time.monotonic() - started, 3),
                }
            await asyncio.sleep(0.1)
        return {"node": runtime.config.node_id, "drained": False, "waited_s": round(time.monotonic() - started, 3)}
