"""The leader's side of inference: take a read index, pick a worker, hand both to the entry node.

The leader confirms its leadership with a read barrier and uses the
barrier's index as the request's read index (Raft ReadIndex): the worker
it picks waits until its own replica has applied that index, then reads the
contexts locally, so a reply is generated from linearizable context without
shipping the context over the network.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from mcpdb.errors import ModelNotServed, NotLeader, Unavailable
from mcpdb.inference.loadboard import LoadBoard
from mcpdb.inference.placement import NoWorkerAvailable, Policy, Request, SchedulerState, choose, forget_node
from mcpdb.node.internal.messages import Assignment, AssignRequest
from mcpdb.raft.barrier import ReadBarrier
from mcpdb.raft.replication import Replication
from mcpdb.store.commands import NO_NAMESPACE
from mcpdb.store.state_machine import ContextStore


class LeaderScheduler:
    def __init__(
        self, replication: Replication, store: ContextStore, barrier: ReadBarrier, policy: Policy, shed_threshold: float
    ) -> None:
        self._replication = replication
        self._store = store
        self._barrier = barrier
        self.policy = policy
        self.shed_threshold = shed_threshold
        self.board = LoadBoard()
        self.state = SchedulerState()
        self.decisions: Counter[str] = Counter()  # node id -> requests assigned, for /v1/cluster and metrics
        self.reasons: Counter[str] = Counter()  # decision reason -> count (affinity hits: "affinity")

    def _domain(self, namespace: str | None, task_id: str | None) -> str | None:
        if namespace is None or task_id is None:
            return None
        task = self._store.get(namespace, task_id)
        return task["domain"] if task and task["kind"] == "task" else None

    def served_models(self) -> list[str]:
        return sorted({node["model"] for node in self._store.nodes() if node.get("model")})

    async def assign(self, body: AssignRequest) -> Assignment:
        if not self._replication.is_leader():
            raise NotLeader("this node is not the leader")
        # nodes (of no namespace) and the chat's task: not another namespace's entries
        read_index = await self._barrier.wait(body.namespace if body.namespace is not None else NO_NAMESPACE)
        registry = {node["id"]: node for node in self._store.nodes()}
        for gone in {w for w in self.state.smooth_current} - set(registry):
            forget_node(self.state, gone)
        workers = [
            dataclasses.replace(w, alive=w.alive and w.node_id not in body.exclude)
            for w in self.board.workers([n for n in registry.values() if n.get("model") == body.model])
        ]
        try:
            decision = choose(
                self.policy,
                Request(body.session_key, self._domain(body.namespace, body.task_id)),
                workers,
                self.state,
                self.shed_threshold,
            )
        except NoWorkerAvailable as error:
            served = self.served_models()
            if body.model not in served:
                raise ModelNotServed(
                    f"model {body.model!r} is not served here; served: {', '.join(served) or 'none'}"
                ) from None
            raise Unavailable(f"{error} for model {body.model!r}") from None
        self.board.assigned(decision.node_id)
        self.decisions[decision.node_id] += 1
        self.reasons[decision.reason] += 1
        return Assignment(
            node_id=decision.node_id,
            http_url=registry[decision.node_id]["http_url"],
            read_index=read_index,
            reason=decision.reason,
            domain_matched=decision.domain_matched,
        )
