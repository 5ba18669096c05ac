"""The leader's view of the inference workers: capacity from the registry, load from heartbeats.

Capacity (model, slots, weight, domains) is replicated in the node registry,
so every leader knows it at once. Load changes every few hundred
milliseconds and would be wasted in the log, so workers send it to whoever
leads, every HEARTBEAT_S. A worker the leader has not heard from within
DEAD_AFTER_S is not scheduled: that is how a dead or partitioned node leaves
the scheduling set within 2 s.

Between heartbeats the leader counts its own assignments into the worker's
in-flight figure, so a burst of requests does not all land on the worker
that looked idle in the last report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mcpdb.inference.placement import Worker

HEARTBEAT_S = 0.5
DEAD_AFTER_S = 2.0


@dataclass
class _Seen:
    load: dict[str, Any]
    at: float
    assigned_since: int = 0


@dataclass
class LoadBoard:
    clock: Any = time.monotonic
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def heartbeat(self, node_id: str, load: dict[str, Any]) -> None:
        self._seen[node_id] = _Seen(load, self.clock())

    def assigned(self, node_id: str) -> None:
        if node_id in self._seen:
            self._seen[node_id].assigned_since += 1

    def alive(self, node_id: str) -> bool:
        seen = self._seen.get(node_id)
        return seen is not None and self.clock() - seen.at <= DEAD_AFTER_S

    def reported_demand(self, node_id: str) -> float:
        """Requests in flight or queued on the node by its last report alone. The scheduler adds the
        requests assigned since (an upper bound that keeps it from piling onto one node between
        reports); the autoscaler must not, or a client sending requests back to back would look like
        two requests on a slot whenever the report still shows the one just finished."""
        seen = self._seen.get(node_id)
        return float(seen.load.get("in_flight", 0) + seen.load.get("queued", 0)) if seen else 0.0

    def workers(self, registry: list[dict[str, Any]]) -> list[Worker]:
        """Scheduler input: every registered node that serves a model, with its latest load (a node
        draining before it leaves, or silent, is not alive)."""
        workers = []
        for node in registry:
            if not node.get("model"):
                continue
            seen = self._seen.get(node["id"])
            load = seen.load if seen else {}
            workers.append(
                Worker(
                    node_id=node["id"],
                    weight=max(float(node.get("weight") or 1.0), 1e-6),
                    slots=max(int(node.get("slots") or 1), 1),
                    domains=frozenset(node.get("domains") or ()),
                    in_flight=int(load.get("in_flight", 0)) + (seen.assigned_since if seen else 0),
                    queued=int(load.get("queued", 0)),
                    alive=self.alive(node["id"]) and not node.get("draining", False),
                )
            )
        return workers

    def snapshot(self) -> dict[str, Any]:
        """Per node: last reported load, seconds since the report, alive or not (for /v1/cluster)."""
        now = self.clock()
        return {
            node_id: {
                **seen.load,
                "assigned_since_report": seen.assigned_since,
                "report_age_s": round(now - seen.at, 3),
                "alive": now - seen.at <= DEAD_AFTER_S,
            }
            for node_id, seen in self._seen.items()
        }
