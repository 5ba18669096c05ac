"""ReadIndex protocol on three nodes wired through an in-memory network.

Each node's Raft state (leader, term, commit and applied index) is a fake the
test controls; messages are delivered only when the test says so, so every
interleaving that matters can be set up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mcpdb.raft.read_index import ROUND_TIMEOUT_S, ReadIndex
from mcpdb.store.commands import NO_NAMESPACE


@dataclass(eq=False)
class FakeRaft:
    """A ``read_index.RaftView`` whose state the test sets."""

    name: str
    leader: FakeRaft | None = None
    current_term: int = 1
    commit_index: int = 10
    last_applied: int = 10
    own_term_noop_index: int | None = 2
    peers: list[FakeRaft] = field(default_factory=list)
    # The namespace each log entry changes, None for one that concerns every read; an index not
    # listed is another namespace's.
    scopes: dict[int, str | None] = field(default_factory=dict)

    def is_leader(self) -> bool:
        return self.leader is self

    def known_leader(self) -> FakeRaft | None:
        return self.leader

    @property
    def voting_peers(self) -> set[FakeRaft]:
        return set(self.peers)

    def last_entry_for(self, namespace: str, after: int, through: int) -> int:
        if through > self.commit_index:  # as RaftNode's: entries not known committed are waited for
            return through
        concerned = [i for i in range(after + 1, through + 1) if self.scopes.get(i, "other") in (None, namespace)]
        return max(concerned, default=after)


class Network:
    def __init__(self) -> None:
        self.rafts = {name: FakeRaft(name) for name in ("a", "b", "c")}
        for raft in self.rafts.values():
            raft.peers = [r for r in self.rafts.values() if r is not raft]
        self.queue: list[tuple[FakeRaft, FakeRaft, dict[str, Any]]] = []
        self.nodes = {name: ReadIndex(raft, self._sender(raft), lambda: None) for name, raft in self.rafts.items()}
        self.results: dict[str, list[tuple[int | None, str | None]]] = {name: [] for name in self.rafts}
        self.elect("a")

    def _sender(self, source: FakeRaft):
        def send(target: FakeRaft, message: dict[str, Any]) -> bool:
            self.queue.append((source, target, message))
            return True

        return send

    def elect(self, name: str, term: int | None = None) -> None:
        leader = self.rafts[name]
        for raft in self.rafts.values():
            raft.leader = leader
            if term is not None:
                raft.current_term = term

    def read(self, name: str, namespace: str | None = None) -> None:
        self.nodes[name].request(lambda index, error: self.results[name].append((index, error)), namespace)

    def tick(self, *names: str) -> None:
        for name in names or tuple(self.rafts):
            self.nodes[name].on_tick()

    def confirm_for(self, follower: str) -> None:
        """The follower asks leader ``a`` for a read index, the leader's round is confirmed and its
        answer delivered: what is left to the follower is applying it."""
        self.tick(follower)
        self.deliver()
        self.tick("a")
        for _ in range(3):
            self.deliver()

    def deliver(self, drop_to: set[str] = frozenset()) -> int:
        delivered = 0
        while self.queue:
            source, target, message = self.queue.pop(0)
            if target.name in drop_to:
                continue
            self.nodes[target.name].on_message(source, message)
            delivered += 1
        return delivered


def test_leader_read_needs_a_majority_to_confirm() -> None:
    net = Network()
    net.read("a")
    net.tick("a")
    assert net.results["a"] == []  # pings sent, nobody answered yet
    net.deliver(drop_to={"c"})  # b answers: leader + b is a majority of 3
    net.deliver()
    assert net.results["a"] == [(10, None)]


def test_no_majority_no_answer_then_timeout(monkeypatch) -> None:
    net = Network()
    net.read("a")
    net.tick("a")
    net.queue.clear()  # every ping lost
    net.tick("a")
    assert net.results["a"] == []
    import mcpdb.raft.read_index as module

    real = module.time.monotonic
    monkeypatch.setattr(module.time, "monotonic", lambda: real() + ROUND_TIMEOUT_S + 1)
    net.tick("a")
    assert net.results["a"][0][0] is None and "majority" in net.results["a"][0][1]


def test_read_index_is_the_commit_index_when_the_round_started() -> None:
    net = Network()
    net.read("a")
    net.tick("a")
    net.rafts["a"].commit_index = 15  # a write commits while the round is in flight
    net.rafts["a"].last_applied = 15
    net.deliver()
    net.deliver()
    assert net.results["a"] == [(10, None)]


def test_follower_waits_until_it_applied_the_read_index() -> None:
    net = Network()
    net.rafts["a"].commit_index = 20
    net.rafts["a"].last_applied = 20
    net.rafts["b"].last_applied = 12
    net.read("b")
    net.confirm_for("b")
    assert net.results["b"] == []  # read index 20 is known, but b has applied only 12
    net.rafts["b"].last_applied = 20
    net.tick("b")
    assert net.results["b"] == [(20, None)]


def test_pongs_from_an_older_term_do_not_count() -> None:
    net = Network()
    net.read("a")
    net.tick("a")
    for raft in (net.rafts["b"], net.rafts["c"]):
        raft.current_term = 0  # followers answer with another term
    net.deliver()
    net.deliver()
    assert net.results["a"] == []


def test_term_change_fails_the_round_instead_of_answering() -> None:
    net = Network()
    net.read("a")
    net.tick("a")
    net.rafts["a"].current_term = 2  # a newer term began: the round proves nothing
    net.deliver()
    net.deliver()
    net.tick("a")
    assert net.results["a"] and net.results["a"][0][0] is None


def test_deposed_leader_fails_queued_and_remote_reads() -> None:
    net = Network()
    net.read("b")
    net.tick("b")
    net.deliver()  # the ask reaches a
    net.elect("c", term=2)  # a loses leadership before starting a round
    net.tick("a")
    net.deliver()
    assert net.results["b"] and net.results["b"][0][0] is None


def test_leader_waits_for_its_election_noop_to_commit() -> None:
    net = Network()
    net.rafts["a"].own_term_noop_index = 30  # the no-op of its term is not committed yet (commit 10)
    net.read("a")
    net.tick("a")
    assert net.queue == []  # no round started
    net.rafts["a"].commit_index = 30
    net.rafts["a"].last_applied = 30
    net.tick("a")
    net.deliver()
    net.deliver()
    assert net.results["a"] == [(30, None)]


def test_a_later_pong_confirms_earlier_rounds() -> None:
    net = Network()
    net.read("a")
    net.tick("a")  # round 1
    first_pings = list(net.queue)
    net.queue.clear()
    net.read("a")
    net.tick("a")  # round 2
    net.deliver()  # only round 2's pings arrive; their pongs confirm round 1 too
    net.deliver()
    assert [index for index, _ in net.results["a"]] == [10, 10]
    assert first_pings  # round 1's pings were never delivered


def test_a_read_of_one_namespace_waits_only_for_the_entries_that_concern_it() -> None:
    """Read index 20 on a follower that applied 12: entries 13-20 are another namespace's but for
    15 (this one's) and 18 (of none: a token): the read is answered once 18 is applied, before 20; a
    read of no namespace waits for 20."""
    net = Network()
    net.rafts["a"].commit_index = net.rafts["a"].last_applied = 20
    follower = net.rafts["b"]
    follower.commit_index, follower.last_applied, follower.scopes = 20, 12, {15: "mine", 18: None}
    net.read("b", "mine")
    net.read("b")
    net.confirm_for("b")
    assert net.results["b"] == []
    for applied, answered in ((15, 0), (17, 0), (18, 1), (19, 1), (20, 2)):
        follower.last_applied = applied
        net.tick("b")
        assert len(net.results["b"]) == answered, applied
    assert net.results["b"] == [(20, None), (20, None)]


def test_a_read_of_one_namespace_behind_only_other_namespaces_is_answered_at_confirmation() -> None:
    net = Network()
    net.rafts["a"].commit_index, net.rafts["a"].last_applied = 30, 10  # 11-30: another tenant's load
    net.read("a", "mine")
    net.tick("a")
    assert net.results["a"] == []  # not before a majority confirmed the leader
    net.deliver()
    net.deliver()
    assert net.results["a"] == [(30, None)]


def test_a_follower_that_has_not_learned_the_commit_waits_for_the_whole_read_index() -> None:
    """Past its commit index a follower may hold an earlier leader's entries: until it learns that
    20 is committed, its read of one namespace waits as a read of none does."""
    net = Network()
    net.rafts["a"].commit_index = net.rafts["a"].last_applied = 20
    follower = net.rafts["b"]
    follower.commit_index, follower.last_applied = 14, 14  # 15-20 are another namespace's
    net.read("b", "mine")
    net.confirm_for("b")
    assert net.results["b"] == []
    follower.commit_index = 20
    net.tick("b")
    assert net.results["b"] == [(20, None)]


def test_waiting_for_another_nodes_read_index_in_one_namespace_skips_the_others() -> None:
    """A chat's worker waits for the read index its leader obtained, for the chat's namespace only:
    released once the entries of that namespace and of none are applied (a chat with no namespace:
    those of none), not behind another tenant's entries; one that concerns every read waits for all."""
    raft = FakeRaft("w", commit_index=20, last_applied=12, scopes={14: "mine", 16: None})
    read_index = ReadIndex(raft, lambda peer, message: True, lambda: None)
    released: dict[str, list[int | None]] = {"mine": [], "none": [], "all": []}
    read_index.wait_applied(20, lambda index, error: released["mine"].append(index), "mine")
    read_index.wait_applied(20, lambda index, error: released["none"].append(index), NO_NAMESPACE)
    read_index.wait_applied(20, lambda index, error: released["all"].append(index))
    for applied, mine, none, every in ((13, 0, 0, 0), (14, 0, 0, 0), (16, 1, 1, 0), (19, 1, 1, 0), (20, 1, 1, 1)):
        raft.last_applied = applied
        read_index.on_tick()
        assert (len(released["mine"]), len(released["none"]), len(released["all"])) == (mine, none, every), applied
    assert released == {"mine": [20], "none": [20], "all": [20]}
