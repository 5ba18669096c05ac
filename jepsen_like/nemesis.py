"""Nemeses: the faults the harness injects, and the schedule that alternates them with healing.

Each nemesis injects one fault and knows how to heal it. A schedule runs
fault windows and healing windows in turn until the run ends; every window
is recorded (name, what was done, start and end time) for the report.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jepsen_like.cluster import TestCluster


@dataclass
class FaultWindow:
    nemesis: str
    detail: str
    start: float
    end: float | None = None


@dataclass
class Nemesis:
    """A fault: ``inject`` returns a description of what it did; ``heal`` undoes it."""

    name: str
    needs_network: bool
    inject: Callable[[TestCluster, random.Random], str]
    heal: Callable[[TestCluster], None]


def _leader_or_random(test: TestCluster, rng: random.Random, leader_bias: float = 0.5) -> str:
    leader = test.cluster.leader()
    if leader is not None and rng.random() < leader_bias:
        return leader
    return rng.choice(test.node_ids)


def _halves(test: TestCluster, rng: random.Random) -> str:
    nodes = test.node_ids[:]
    rng.shuffle(nodes)
    minority, majority = nodes[: len(nodes) // 2], nodes[len(nodes) // 2:]
    test.lab.partition([minority, majority])  # type: ignore[union-attr]
    return f"{minority} | {majority}"


def _isolate_leader(test: TestCluster, rng: random.Random) -> str:
    leader = test.cluster.leader() or rng.choice(test.node_ids)
    others = [n for n in test.node_ids if n != leader]
    test.lab.partition([[leader], others])  # type: ignore[union-attr]
    return f"[{leader}] | {others}"


def _bridge(test: TestCluster, rng: random.Random) -> str:
    """Two overlapping majorities: a bridge node talks to both sides, the sides not to each other."""
    nodes = test.node_ids[:]
    rng.shuffle(nodes)
    bridge, rest = nodes[0], nodes[1:]
    left, right = rest[: len(rest) // 2], rest[len(rest) // 2:]
    for a in left:
        for b in right:
            test.lab.cut(a, b)  # type: ignore[union-attr]
            test.lab.cut(b, a)  # type: ignore[union-attr]
    return f"{left} <-{bridge}-> {right}"


def _heal_network(test: TestCluster) -> None:
    if test.lab is not None:
        test.lab.heal()


def _kill(test: TestCluster, rng: random.Random) -> str:
    victim = _leader_or_random(test, rng)
    test.cluster.kill(victim)
    return f"kill -9 {victim}"


def _restart_dead(test: TestCluster) -> None:
    for node_id in test.node_ids:
        if not test.cluster.running(node_id):
            test.cluster.start(node_id)


def _pause(test: TestCluster, rng: random.Random) -> str:
    victim = _leader_or_random(test, rng)
    test.cluster.pause(victim)
    return f"SIGSTOP {victim}"


def _resume_all(test: TestCluster) -> None:
    for node_id in test.node_ids:
        test.cluster.resume(node_id)


def _crash_all(test: TestCluster, rng: random.Random) -> str:
    for node_id in test.node_ids:
        test.cluster.kill(node_id)
    return "kill -9 every node"


def _slow(test: TestCluster, rng: random.Random) -> str:
    for node_id in test.node_ids:
        test.lab.slow(node_id)  # type: ignore[union-attr]
    return "every link limited to 512 kbit/s"


def _lossy(test: TestCluster, rng: random.Random) -> str:
    for node_id in test.node_ids:
        test.lab.lossy(node_id)  # type: ignore[union-attr]
    return "20% of packets between nodes dropped"


NEMESES: dict[str, Nemesis] = {n.name: n for n in (
    Nemesis("partition", True, _halves, _heal_network),
    Nemesis("partition-leader", True, _isolate_leader, _heal_network),
    Nemesis("bridge", True, _bridge, _heal_network),
    Nemesis("kill", False, _kill, _restart_dead),
    Nemesis("pause", False, _pause, _resume_all),
    Nemesis("crash", False, _crash_all, _restart_dead),
    Nemesis("slow", True, _slow, _heal_network),
    Nemesis("lossy", True, _lossy, _heal_network),
)}


def resolve(names: list[str], have_network: bool) -> list[Nemesis]:
    """The named nemeses; a clear error for unknown ones or ones this machine cannot run."""
    unknown = [n for n in names if n not in NEMESES]
    if unknown:
        raise ValueError(f"unknown nemesis {', '.join(unknown)}; choose from {', '.join(NEMESES)}")
    chosen = [NEMESES[n] for n in names]
    blocked = [n.name for n in chosen if n.needs_network and not have_network]
    if blocked:
        raise ValueError(f"{', '.join(blocked)} need network namespaces (run as root with iproute2 and "
                         "nftables); on loopback only kill, pause and crash are available")
    return chosen


@dataclass
class Schedule:
    """Alternates fault windows (one nemesis each, in turn, or all at once) with healing."""

    nemeses: list[Nemesis]
    fault_s: float = 5.0
    heal_s: float = 5.0
    combined: bool = False
    seed: int = 0
    windows: list[FaultWindow] = field(default_factory=list)

    def run(self, test: TestCluster, clock: Callable[[], float], stop: threading.Event) -> None:
        rng = random.Random(self.seed)
        turn = 0
        stop.wait(self.heal_s)
        while not stop.is_set():
            active = self.nemeses if self.combined else [self.nemeses[turn % len(self.nemeses)]]
            turn += 1
            opened = []
            for nemesis in active:
                window = FaultWindow(nemesis.name, "", clock())
                window.detail = nemesis.inject(test, rng)
                self.windows.append(window)
                opened.append((nemesis, window))
            stop.wait(self.fault_s)
            for nemesis, window in opened:
                nemesis.heal(test)
                window.end = clock()
            stop.wait(self.heal_s)

    def heal_everything(self, test: TestCluster) -> None:
        """Undo every kind of fault, whatever the schedule was doing when it stopped."""
        _heal_network(test)
        _resume_all(test)
        _restart_dead(test)
