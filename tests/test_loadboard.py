"""The leader's load board: capacity from the registry, load from heartbeats, silence means dead."""

from __future__ import annotations

from mcpdb.inference.loadboard import DEAD_AFTER_S, LoadBoard

REGISTRY = [
    {"id": "n1", "model": "m", "slots": 2, "weight": 30.0, "domains": ["law"]},
    {"id": "n2", "model": "m", "slots": 1, "weight": 10.0},
    {"id": "n3"},
]  # a store-only node: never scheduled


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_node_silent_for_two_seconds_leaves_the_scheduling_set() -> None:
    clock = Clock()
    board = LoadBoard(clock=clock)
    board.heartbeat("n1", {"in_flight": 1, "queued": 0})
    board.heartbeat("n2", {"in_flight": 0, "queued": 0})
    assert {w.node_id: w.alive for w in board.workers(REGISTRY)} == {"n1": True, "n2": True}
    clock.now += DEAD_AFTER_S / 2
    board.heartbeat("n2", {"in_flight": 0, "queued": 0})
    clock.now += DEAD_AFTER_S / 2 + 0.01
    assert {w.node_id: w.alive for w in board.workers(REGISTRY)} == {"n1": False, "n2": True}


def test_capacity_comes_from_the_registry_and_assignments_count_until_the_next_report() -> None:
    board = LoadBoard(clock=Clock())
    board.heartbeat("n1", {"in_flight": 1, "queued": 2})
    board.assigned("n1")
    board.assigned("n1")
    n1 = next(w for w in board.workers(REGISTRY) if w.node_id == "n1")
    assert (n1.weight, n1.slots, n1.domains, n1.in_flight, n1.queued) == (30.0, 2, frozenset({"law"}), 3, 2)
    assert n1.load == 2.5
    board.heartbeat("n1", {"in_flight": 0, "queued": 0})  # the report covers what was assigned before it
    assert next(w for w in board.workers(REGISTRY) if w.node_id == "n1").in_flight == 0


def test_a_registered_node_never_heard_from_is_not_alive() -> None:
    workers = LoadBoard(clock=Clock()).workers(REGISTRY)
    assert [(w.node_id, w.alive) for w in workers] == [("n1", False), ("n2", False)]
