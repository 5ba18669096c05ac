"""Which node serves an inference request: pure policy functions over a snapshot of the workers.

The leader calls ``choose`` with the workers it knows (capacity from the
replicated registry, load from heartbeats) and a small mutable
``SchedulerState`` (round-robin cursor, smooth-weighted counters, the
session -> node affinity map). Nothing here does I/O or reads a clock, so
the properties the issue asks for are checked directly by hypothesis.

Policies:

- ``round_robin``: next alive node in id order.
- ``weighted``: smooth weighted round robin (the nginx algorithm): over any
  window, each node's share of picks tracks its weight, without bursts.
- ``least_connections``: fewest requests in flight or queued per slot,
  heavier weight first on ties.
- ``affinity`` (default): the node that served the session last holds its
  prompt prefix in a KV slot, so a follow-up costs only the new tokens. Stick
  to it unless its load exceeds the least-loaded node's by more than
  ``shed_threshold`` requests per slot; otherwise (and for new sessions) pick
  by weight among the nodes with spare capacity, and remember the choice.

Domain: a request for a task in domain D goes only to alive nodes
specialised in D while any exists; otherwise to any alive node.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

AFFINITY_CAPACITY = 100_000  # sessions remembered; the least recently routed are forgotten first


class Policy(str, Enum):
    round_robin = "round_robin"
    weighted = "weighted"
    least_connections = "least_connections"
    affinity = "affinity"


class NoWorkerAvailable(Exception):
    """No alive node serves a model right now."""


@dataclass(frozen=True)
class Worker:
    node_id: str
    weight: float
    slots: int = 1
    domains: frozenset[str] = frozenset()
    in_flight: int = 0
    queued: int = 0
    alive: bool = True

    @property
    def load(self) -> float:
        """Requests in flight or waiting, per slot: 1.0 means every slot busy."""
        return (self.in_flight + self.queued) / self.slots


@dataclass(frozen=True)
class Request:
    session_key: str | None = None
    domain: str | None = None


@dataclass(frozen=True)
class Decision:
    node_id: str
    reason: str  # round_robin | weighted | least_connections | affinity | spare_capacity
    domain_matched: bool = False


@dataclass
class SchedulerState:
    rr_cursor: int = 0
    smooth_current: dict[str, float] = field(default_factory=dict)
    affinity: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def remember(self, session_key: str, node_id: str) -> None:
        self.affinity[session_key] = node_id
        self.affinity.move_to_end(session_key)
        while len(self.affinity) > AFFINITY_CAPACITY:
            self.affinity.popitem(last=False)


def candidates(request: Request, workers: list[Worker]) -> tuple[list[Worker], bool]:
    """Alive workers in id order, narrowed to the request's domain when any alive node has it."""
    alive = sorted((w for w in workers if w.alive), key=lambda w: w.node_id)
    if not alive:
        raise NoWorkerAvailable("no alive node serves a model")
    if request.domain:
        specialised = [w for w in alive if request.domain in w.domains]
        if specialised:
            return specialised, True
    return alive, False


def _round_robin(pool: list[Worker], state: SchedulerState) -> Worker:
    chosen = pool[state.rr_cursor % len(pool)]
    state.rr_cursor += 1
    return chosen


def _smooth_weighted(pool: list[Worker], state: SchedulerState) -> Worker:
    """Every candidate gains its weight; the richest is picked and pays the pool's total."""
    total = sum(w.weight for w in pool)
    for w in pool:
        state.smooth_current[w.node_id] = state.smooth_current.get(w.node_id, 0.0) + w.weight
    chosen = max(pool, key=lambda w: (state.smooth_current[w.node_id], w.weight, w.node_id))
    state.smooth_current[chosen.node_id] -= total
    return chosen


def _least_connections(pool: list[Worker]) -> Worker:
    return min(pool, key=lambda w: (w.load, -w.weight, w.node_id))


def _affinity(pool: list[Worker], request: Request, state: SchedulerState, shed_threshold: float) -> tuple[Worker, str]:
    lightest = min(w.load for w in pool)
    if request.session_key is not None:
        holder_id = state.affinity.get(request.session_key)
        holder = next((w for w in pool if w.node_id == holder_id), None)
        if holder is not None and holder.load - lightest <= shed_threshold:
            return holder, "affinity"
    spare = [w for w in pool if w.load - lightest <= shed_threshold]
    return _smooth_weighted(spare, state), "spare_capacity"


def choose(
    policy: Policy, request: Request, workers: list[Worker], state: SchedulerState, shed_threshold: float = 1.0
) -> Decision:
    """Pick the node for ``request``; raises NoWorkerAvailable when no alive worker exists."""
    pool, domain_matched = candidates(request, workers)
    if policy is Policy.round_robin:
        chosen, reason = _round_robin(pool, state), policy.value
    elif policy is Policy.weighted:
        chosen, reason = _smooth_weighted(pool, state), policy.value
    elif policy is Policy.least_connections:
        chosen, reason = _least_connections(pool), policy.value
    else:
        chosen, reason = _affinity(pool, request, state, shed_threshold)
    if request.session_key is not None:
        state.remember(request.session_key, chosen.node_id)
    return Decision(chosen.node_id, reason, domain_matched)


def forget_node(state: SchedulerState, node_id: str) -> None:
    """A node left the cluster: its sessions' KV state is gone, so drop their affinity."""
    state.smooth_current.pop(node_id, None)
    for session in [s for s, n in state.affinity.items() if n == node_id]:
        del state.affinity[session]
