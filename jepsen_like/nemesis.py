"""Nemeses: the faults the harness injects, and the schedule that alternates them with healing.

Each nemesis injects one fault and knows how to heal it. A schedule runs
fault windows and healing windows in turn until the run ends; every window
is recorded (name, what was done, start and end time) for the report.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from jepsen_like.cluster import TestCluster


@dataclass
class FaultWindow:
    nemesis: str
    detail: str
    start: float
    end: float | None = None
    # From the start of the heal: seconds until every node was ready and had applied what an agreed
    # leader had committed (None: not within RECOVERY_LIMIT_S, or the run ended first).
    recovered_s: float | None = None


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
    minority, majority = nodes[: len(nodes) // 2], nodes[len(nodes) // 2 :]
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
    left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
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


def _remove_voter(test: TestCluster, rng: random.Random) -> str:
    """Remove a follower from the voters through the API (any node forwards it), then kill it.

    Combined with a partition, the change may be proposed by a leader that is
    cut off and later truncated: pysyncobj must roll the membership back.
    """
    leader = test.cluster.leader()
    victim = rng.choice([n for n in test.node_ids if n != leader])
    address = test.cluster.spec(victim).raft_addr
    via = rng.choice([n for n in test.node_ids if n != victim])
    try:
        response = httpx.delete(
            f"{test.url(via)}/v1/cluster/members/{address}",
            headers={"Authorization": f"Bearer {test.token}"},
            timeout=5,
        )
        outcome = f"{response.status_code}"
    except httpx.HTTPError as error:
        outcome = type(error).__name__
    test.cluster.kill(victim)
    return f"remove voter {victim} via {via} ({outcome}), kill it"


def _voters(test: TestCluster, exclude: str) -> list[str] | None:
    """Raft addresses of the voters as the current leader sees them (None if no leader answers)."""
    headers = {"Authorization": f"Bearer {test.token}"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        leader = test.cluster.leader()
        if leader is not None and leader != exclude:
            try:
                return httpx.get(f"{test.url(leader)}/v1/cluster", headers=headers, timeout=2).json()["raft_members"]
            except (httpx.HTTPError, ValueError, KeyError):
                pass
        time.sleep(0.3)
    return None


def _rejoin_removed(test: TestCluster) -> None:
    """Bring stopped nodes back. A node the leader no longer counts as a voter rejoins
    wiped, as a new voter; one that still is a voter keeps its data (wiping a voter's
    log and vote would be a lost disk, which Raft does not tolerate)."""
    headers = {"Authorization": f"Bearer {test.token}"}
    for node_id in test.node_ids:
        if test.cluster.running(node_id):
            continue
        address = test.cluster.spec(node_id).raft_addr
        voters = _voters(test, exclude=node_id)
        if voters is None or address in voters:
            test.cluster.start(node_id)
            continue
        shutil.rmtree(test.cluster.data_dir / node_id, ignore_errors=True)
        test.cluster.start(node_id)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and address not in (_voters(test, exclude=node_id) or []):
            leader = test.cluster.leader()
            if leader is not None:
                try:
                    httpx.post(
                        f"{test.url(leader)}/v1/cluster/members",
                        json={"raft_addr": address},
                        headers=headers,
                        timeout=5,
                    )
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)


def _slow(test: TestCluster, rng: random.Random) -> str:
    for node_id in test.node_ids:
        test.lab.slow(node_id)  # type: ignore[union-attr]
    return "every link limited to 512 kbit/s"


def _lossy(test: TestCluster, rng: random.Random) -> str:
    for node_id in test.node_ids:
        test.lab.lossy(node_id)  # type: ignore[union-attr]
    return "20% of packets between nodes dropped"


NEMESES: dict[str, Nemesis] = {
    n.name: n
    for n in (
        Nemesis("partition", True, _halves, _heal_network),
        Nemesis("partition-leader", True, _isolate_leader, _heal_network),
        Nemesis("bridge", True, _bridge, _heal_network),
        Nemesis("kill", False, _kill, _restart_dead),
        Nemesis("pause", False, _pause, _resume_all),
        Nemesis("crash", False, _crash_all, _restart_dead),
        Nemesis("membership", False, _remove_voter, _rejoin_removed),
        Nemesis("slow", True, _slow, _heal_network),
        Nemesis("lossy", True, _lossy, _heal_network),
    )
}


def resolve(names: list[str], have_network: bool) -> list[Nemesis]:
    """The named nemeses; a clear error for unknown ones or ones this machine cannot run."""
    unknown = [n for n in names if n not in NEMESES]
    if unknown:
        raise ValueError(f"unknown nemesis {', '.join(unknown)}; choose from {', '.join(NEMESES)}")
    chosen = [NEMESES[n] for n in names]
    blocked = [n.name for n in chosen if n.needs_network and not have_network]
    if blocked:
        raise ValueError(
            f"{', '.join(blocked)} need network namespaces (run as root with iproute2 and "
            "nftables); on loopback only kill, pause and crash are available"
        )
    return chosen


SNAPSHOT_TIMEOUT_S = 600.0
SNAPSHOT_HEAD_START_S = 0.3  # between forcing the snapshots and the fault: each node has pinned its version


def _compact_everywhere(test: TestCluster, clock: Callable[[], float], window: FaultWindow) -> threading.Thread:
    """Force a snapshot on every running node at once (``POST /v1/node/snapshot``, which answers when it
    is written), in the background: the fault's window and the snapshots overlap. ``window`` ends when
    the last answers and says what each did."""
    outcomes: dict[str, str] = {}

    def one(node_id: str) -> None:
        try:
            answer = httpx.post(
                f"{test.url(node_id)}/v1/node/snapshot",
                headers={"Authorization": f"Bearer {test.token}"},
                timeout=SNAPSHOT_TIMEOUT_S,
            )
            body = answer.json() if answer.status_code == 200 else {}
            outcomes[node_id] = (
                f"index {body['index']}, {body['bytes'] / 2**20:.0f} MiB in {body['seconds']:.1f} s"
                if body.get("index")
                else f"{answer.status_code} {str(body.get('reason', answer.text))[:80]}"
            )
        except (httpx.HTTPError, ValueError, KeyError) as error:
            outcomes[node_id] = type(error).__name__

    def all_of_them() -> None:
        threads = [threading.Thread(target=one, args=(n,)) for n in test.node_ids if test.cluster.running(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        window.detail = "; ".join(f"{node}: {outcome}" for node, outcome in sorted(outcomes.items()))
        window.end = clock()

    runner = threading.Thread(target=all_of_them, daemon=True)
    runner.start()
    return runner


RECOVERY_LIMIT_S = 180.0  # the longest a heal is waited for before the schedule goes on regardless


def _recovered(test: TestCluster, stop: threading.Event) -> bool:
    """Wait until every node answers ready and has applied the commit index an agreed leader reports once
    there is one: the cluster is whole again. False if ``RECOVERY_LIMIT_S`` passed or the run ended."""
    began = time.monotonic()
    target = None
    while time.monotonic() - began < RECOVERY_LIMIT_S and not stop.is_set():
        if target is None:
            leader = test.cluster.leader()
            status = test.cluster.node_status(leader) if leader else None
            target = status["commit_index"] if status else None
        if target is not None:
            statuses = [test.cluster.node_status(node) for node in test.node_ids]
            if all(s and s.get("ready") and s["applied_index"] >= target for s in statuses):
                return True
        time.sleep(0.1)
    return False


@dataclass
class Schedule:
    """Alternates fault windows (one nemesis each, in turn, or all at once) with healing; with
    ``compact``, every fault window starts by forcing a snapshot on every node, so the fault meets
    snapshots being written (a kill or crash lands in the middle of one on a large store). Each heal
    lasts at least ``heal_s``, and until the cluster is whole again (``recovered_s``)."""

    nemeses: list[Nemesis]
    fault_s: float = 5.0
    heal_s: float = 5.0
    combined: bool = False
    seed: int = 0
    compact: bool = False
    windows: list[FaultWindow] = field(default_factory=list)
    _compactions: list[threading.Thread] = field(default_factory=list)

    def run(self, test: TestCluster, clock: Callable[[], float], stop: threading.Event) -> None:
        rng = random.Random(self.seed)
        turn = 0
        stop.wait(self.heal_s)
        while not stop.is_set():
            active = self.nemeses if self.combined else [self.nemeses[turn % len(self.nemeses)]]
            turn += 1
            if self.compact:  # first, so that a kill or crash lands while the snapshots are being written
                compaction = FaultWindow("compact", "snapshots under way on every node", clock())
                self.windows.append(compaction)
                self._compactions.append(_compact_everywhere(test, clock, compaction))
                stop.wait(SNAPSHOT_HEAD_START_S)
            opened = []
            for nemesis in active:
                window = FaultWindow(nemesis.name, "", clock())
                window.detail = nemesis.inject(test, rng)
                self.windows.append(window)
                opened.append((nemesis, window))
            stop.wait(self.fault_s)
            healing = time.monotonic()
            for nemesis, window in opened:
                nemesis.heal(test)
                window.end = clock()
            recovered = time.monotonic() - healing if _recovered(test, stop) else None
            for _, window in opened:
                window.recovered_s = recovered
            stop.wait(max(0.0, self.heal_s - (time.monotonic() - healing)))

    def heal_everything(self, test: TestCluster) -> None:
        """Undo every kind of fault, whatever the schedule was doing when it stopped; let forced
        snapshots finish (a paused node answers once resumed)."""
        _heal_network(test)
        _resume_all(test)
        if any(n.name == "membership" for n in self.nemeses):
            _rejoin_removed(test)
        _restart_dead(test)
        for compaction in self._compactions:
            compaction.join(SNAPSHOT_TIMEOUT_S)
