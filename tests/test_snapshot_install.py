"""Installing the leader's snapshot on a follower: it keeps the entries past the snapshot it acknowledged, and
a follower killed in the middle of the install starts again.

1. pysyncobj's follower installs a snapshot with ``__loadDumpFile(clearJournal=True)``: every entry of its
   journal goes, including entries past the snapshot's index that match the leader's and that it has
   acknowledged. Raft (Figure 13) keeps the entries following the snapshot's last entry when the follower
   holds that entry. The leader still counts them (a match index is only ever raised), so an entry can be
   committed, and its writer told so, while only the leader holds it. A leader sends a snapshot to a follower
   whose next index falls to its log's first index; a reset reply that the follower sent while it had a gap
   (every AppendEntries after a dropped batch draws one) and that arrives after the leader re-sent the gap
   and compacted its log does that: the follower takes the re-sent entries first, acknowledges them, then
   takes the snapshot.
2. ``Journal.clear`` (the install's first step) drops every segment at once; pysyncobj then writes the
   snapshot's two entries. A node killed between the two (two fsyncs of a directory apart), or a power loss
   before the next journal fsync, leaves an empty journal, and ``_swap_journal`` reads ``journal[-1]``: the
   node cannot start again.

mcpdb keeps such entries (``RaftNode._wrap_load_dump_file``) and starts a node whose journal is empty
(``_swap_journal``). Found by an audit in session 24; both tests failed on every run before.

Deterministic: real mcpdb Raft nodes (journal, store, snapshots) ticked by hand, without threads; a third
voter C is simulated by hand-made messages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mcpdb.ops.localcluster import free_port
from mcpdb.raft.journal import Journal
from mcpdb.raft.pysyncobj_bridge import KEEPALIVE
from mcpdb.store.commands import Put, encode
from tests.raft_helpers import in_process_voter, ticked_by_hand

_SENT: dict[Any, list[tuple[str, dict[str, Any]]]] = {}  # transport -> (recipient address, message)


@pytest.fixture(autouse=True)
def _ticked_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    def record(transport: Any, to: Any, message: Any) -> bool:
        if not (isinstance(message, dict) and message.get("type") == KEEPALIVE):
            _SENT.setdefault(transport, []).append((to.address, message))
        return True

    ticked_by_hand(monkeypatch, record)


class _Node:
    def __init__(self, root: Path, address: str, peers: list[str]) -> None:
        self.replication, self.store = in_process_voter(root / address.replace(":", "_"), address, peers)
        self.raft = self.replication._raft
        self.sent = _SENT.setdefault(self.raft._SyncObj__transport, [])
        self.read = 0

    def tick(self) -> None:
        raft = self.raft
        raft._SyncObj__connectedNodes.update(raft.otherNodes)
        if raft.is_leader():
            for node in raft.otherNodes:
                raft._SyncObj__lastResponseTime[node] = time.monotonic()
        else:
            raft.reset_election_timer(grace=100)
        raft.doTick(0)

    def stand(self, voter: str) -> None:
        self.raft._SyncObj__connectedNodes.update(self.raft.otherNodes)
        self.raft._SyncObj__raftElectionDeadline = 0
        self.raft.doTick(0)
        self.deliver(voter, {"type": "response_vote", "term": self.raft.raftCurrentTerm})
        assert self.raft.is_leader()

    def deliver(self, sender: str, message: dict[str, Any]) -> None:
        peer = next(node for node in self.raft.otherNodes if node.address == sender)
        self.raft._SyncObj__transport._onMessageReceived(peer, message)
        self.tick()

    def new(self, to: str) -> list[dict[str, Any]]:
        """What this node sent ``to`` since the last call."""
        fresh, self.read = self.sent[self.read :], len(self.sent)
        return [message for address, message in fresh if address == to]

    def log(self) -> list[tuple[int, int]]:
        journal = self.raft._SyncObj__raftLog
        return [(journal[i][1], journal[i][2]) for i in range(len(journal))]

    def snapshot(self) -> None:
        self.raft.forceLogCompaction()
        deadline = time.monotonic() + 30
        while self.raft.snapshots.written == 0:
            assert time.monotonic() < deadline, "no snapshot written"
            self.tick()
            time.sleep(0.01)

    def stop(self) -> None:
        self.raft._doDestroy()
        self.raft.stall_watch.stop()
        self.raft.snapshots.close()
        self.store.close()


def _put(key: str) -> bytes:
    return encode(Put("ns", key, {"kind": "memory", "facts": [key]}, None, None, 1.0))


def _ack(through: int) -> dict[str, Any]:
    return {"type": "next_node_idx", "next_node_idx": through + 1, "reset": False, "success": True, "term": 1}


def _a_gap_and_its_resets(leader: _Node, follower: _Node, L: str, F: str, C: str) -> list[dict[str, Any]]:  # noqa: N803
    """6..7 never reach F (their AppendEntries dropped for a backed-up connection) and are acknowledged by C;
    8 and 9 do, and F, which lacks 6, answers each with a reset to 6: those answers, not yet delivered."""
    for key in ("d", "e"):
        leader.raft.propose(_put(key), lambda *_: None)
    leader.tick()
    leader.new(F)
    leader.deliver(C, _ack(7))
    resets = []
    for key in ("f", "g"):
        leader.raft.propose(_put(key), lambda *_: None)
        leader.tick()
        for message in leader.new(F):
            if message["type"] == "append_entries":
                follower.deliver(L, message)
        resets += [message for message in follower.new(L) if message["type"] == "next_node_idx"]
    assert len(resets) >= 2 and all((m["next_node_idx"], m["reset"]) == (6, True) for m in resets)
    return resets


@pytest.mark.parametrize("tenth", ["a write", "adding a voter"])
def test_an_install_keeps_the_acknowledged_entries_past_the_snapshot(tmp_path: Path, tenth: str) -> None:
    """With index 10 a write, it is committed counting F, and F still holds it after the install. With
    index 10 the addition of voter D (not committed: the leader then needs 3 of 4), F keeps it and it
    stays in effect on F, as from its append (a reviewer found the snapshot's voters replacing it)."""
    L, F, C, D = (f"127.0.0.1:{free_port()}" for _ in range(4))
    leader, follower = _Node(tmp_path, L, [F, C]), _Node(tmp_path, F, [L, C])
    outcome: dict[str, Any] = {}

    def to_follower(messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if message["type"] == "append_entries":
                follower.deliver(L, message)

    def to_leader(messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if message["type"] == "next_node_idx":
                leader.deliver(F, message)

    try:
        leader.stand(C)
        leader.tick()
        to_follower(leader.new(F))
        to_leader(follower.new(L))
        leader.deliver(C, _ack(2))
        for key in ("a", "b", "c"):  # 3..5, on every voter
            leader.raft.propose(_put(key), lambda *_: None)
        leader.tick()
        leader.deliver(C, _ack(5))
        leader.tick()
        to_follower(leader.new(F))
        to_leader(follower.new(L))
        assert leader.raft.raftCommitIndex == 5 and follower.log()[-1] == (5, 1)

        resets = _a_gap_and_its_resets(leader, follower, L, F, C)
        leader.deliver(C, _ack(9))
        assert leader.raft.raftLastApplied == 9
        # The first reset arrives: the leader re-sends 6..9 to F (on its way).
        leader.deliver(F, resets[0])
        leader.raft._SyncObj__sendAppendEntries()
        resent = leader.new(F)
        # The leader's snapshot (index 9) lands: its log is compacted to 8..9.
        leader.snapshot()
        assert leader.log()[0] == (8, 1)
        resent += leader.new(F)
        # C falls silent (down, or slow). A write w, index 10, is sent to F behind the re-sent entries.
        if tenth == "a write":
            leader.raft.propose(_put("w"), lambda result, refusal: outcome.__setitem__("w", (result, refusal)))
        else:
            leader.raft.change_membership("add", D, lambda refusal: outcome.__setitem__("w", (None, refusal)))
        leader.tick()
        resent += leader.new(F)
        to_follower(resent)
        assert follower.log()[-1] == (10, 1)
        acknowledgement = [message for message in follower.new(L) if message["type"] == "next_node_idx"]
        assert acknowledgement[-1]["success"] and acknowledgement[-1]["next_node_idx"] == 11  # after F's fsync
        # The last reset, sent before F had the re-sent entries, arrives now: F's next index falls to the
        # leader's first index, and the leader sends it the snapshot.
        leader.deliver(F, resets[-1])
        leader.raft._SyncObj__sendAppendEntries()
        chunks = [message for message in leader.new(F) if "serialized" in message]
        assert chunks and chunks[-1]["serialized"][2]
        # F's acknowledgement of w arrives: w is committed (L and F, 2 of 3) and its writer told so.
        to_leader(acknowledgement)
        leader.tick()
        leader.tick()
        if tenth == "a write":
            assert leader.raft.raftCommitIndex == 10 and outcome.get("w", (None, "pending"))[1] is None, outcome
        # F installs the snapshot. (The AppendEntries re-sending w after it is lost with the link, or with L.)
        for chunk in chunks:
            follower.deliver(L, chunk)
        assert (10, 1) in follower.log(), (
            f"after installing the snapshot at 9, F's log is {follower.log()}: w (index 10, term 1), which F "
            "acknowledged and which was committed and reported a success counting F, is held by the leader alone"
        )
        if tenth == "adding a voter":
            assert D in follower.raft.voters(), f"F keeps 'add {D}' at 10, yet its voters are {follower.raft.voters()}"
    finally:
        leader.stop()
        follower.stop()


def test_a_follower_past_the_leaders_snapshot_does_not_install_it(tmp_path: Path) -> None:
    """A reset F sent while it had a gap lands late: F has since taken the re-sent entries, applied
    through 10 and written its own snapshot at 10 (journal 9..11), and the leader, its next index for F
    fallen to its first, sends its snapshot at 9. Installed, it cleared F's journal (it does not hold
    8..9), and w at 11, acknowledged by F and committed counting it, was held by the leader alone (C's
    log ends at 10: if L stops, C wins F's vote and replaces 11). F keeps its log and state, and the
    leader goes on with AppendEntries. Found by an audit in session 25;
    failed on every run before (3 of 3)."""
    L, F, C = (f"127.0.0.1:{free_port()}" for _ in range(3))
    leader, follower = _Node(tmp_path, L, [F, C]), _Node(tmp_path, F, [L, C])
    outcome: dict[str, Any] = {}
    try:
        leader.stand(C)
        leader.tick()
        for message in leader.new(F):
            if message["type"] == "append_entries":
                follower.deliver(L, message)
        for message in follower.new(L):
            if message["type"] == "next_node_idx":
                leader.deliver(F, message)
        leader.deliver(C, _ack(2))
        for key in ("a", "b", "c"):  # 3..5 on every voter
            leader.raft.propose(_put(key), lambda *_: None)
        leader.tick()
        leader.deliver(C, _ack(5))
        leader.tick()
        for message in leader.new(F):
            follower.deliver(L, message)
        for message in follower.new(L):
            if message["type"] == "next_node_idx":
                leader.deliver(F, message)
        assert leader.raft.raftCommitIndex == 5 and follower.log()[-1] == (5, 1)

        resets = _a_gap_and_its_resets(leader, follower, L, F, C)
        leader.deliver(C, _ack(9))
        assert leader.raft.raftLastApplied == 9

        leader.deliver(F, resets[0])  # the first reset: L re-sends 6..9
        leader.raft._SyncObj__sendAppendEntries()
        to_f = leader.new(F)
        leader.snapshot()  # L's snapshot at 9: its log is 8..9
        assert leader.log()[0] == (8, 1)
        to_f += leader.new(F)
        leader.raft.propose(_put("x"), lambda *_: None)  # 10, committed with C, F told so
        leader.tick()
        leader.deliver(C, _ack(10))
        leader.tick()
        assert leader.raft.raftCommitIndex == 10
        to_f += leader.new(F)
        # C falls silent. A write w, index 11.
        leader.raft.propose(_put("w"), lambda result, refusal: outcome.__setitem__("w", (result, refusal)))
        leader.tick()
        to_f += leader.new(F)

        for message in to_f:  # all of it reaches F, before the last reset reaches L
            follower.deliver(L, message)
        assert follower.log()[-1] == (11, 1) and follower.raft.raftLastApplied == 10
        acknowledgement = [m for m in follower.new(L) if m["type"] == "next_node_idx"]
        assert acknowledgement[-1]["success"] and acknowledgement[-1]["next_node_idx"] == 12
        follower.snapshot()  # F's own snapshot, at 10 (its size trigger, here forced)
        assert follower.log()[0] == (9, 1), follower.log()

        # The last reset, sent long before, lands: L's next index for F falls to 6, and L sends its snapshot.
        leader.deliver(F, resets[-1])
        leader.raft._SyncObj__sendAppendEntries()
        chunks = [m for m in leader.new(F) if "serialized" in m]
        assert chunks and chunks[-1]["serialized"][2]
        # F's acknowledgement of 11 lands: w commits on L and F, and its writer is told so.
        for message in acknowledgement:
            leader.deliver(F, message)
        leader.tick()
        leader.tick()
        assert leader.raft.raftCommitIndex == 11 and outcome.get("w", (None, "pending"))[1] is None, outcome

        own_snapshot = follower.raft.snapshots.last
        for chunk in chunks:  # L's older snapshot reaches F
            follower.deliver(L, chunk)
        applied = follower.raft.raftLastApplied
        assert (11, 1) in follower.log() and applied >= 10, (
            f"F, whose own snapshot was at 10, installed L's at 9: its log is now {follower.log()} and its "
            f"applied index {applied} (store: {follower.store.applied_index()}); w (11, term 1), acknowledged by F "
            "and committed counting it, is held by the leader alone"
        )
        assert follower.raft.snapshots.older_refused == 1 and follower.raft.snapshots.last is own_snapshot
        assert follower.store.get("ns", "x") is not None  # index 10: F's state did not go back
        assert not [m for m in follower.new(L) if m["type"] == "next_node_idx"]  # nothing to answer
        leader.raft._SyncObj__sendAppendEntries()  # L goes on past its snapshot: AppendEntries, no second one
        sent = [m for m in leader.new(F) if m["type"] == "append_entries"]
        assert sent and not any("serialized" in m for m in sent), sent
        for message in sent:
            follower.deliver(L, message)
        assert follower.raft.raftLastApplied == 11 and follower.store.get("ns", "w") is not None
    finally:
        leader.stop()
        follower.stop()


class _Killed(BaseException):
    """The process dies here: nothing after this point runs."""


def test_a_follower_killed_in_the_middle_of_an_install_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    L, F, C = (f"127.0.0.1:{free_port()}" for _ in range(3))
    leader, follower = _Node(tmp_path, L, [F, C]), _Node(tmp_path, F, [L, C])
    try:
        leader.stand(C)
        for key in ("a", "b", "c"):
            leader.raft.propose(_put(key), lambda *_: None)
        leader.tick()
        leader.deliver(C, _ack(5))
        leader.tick()
        assert leader.raft.raftLastApplied == 5
        leader.snapshot()
        leader.new(F)
        # F (a new or wiped voter) hears a heartbeat, reports its gap, and is sent the snapshot.
        leader.raft._SyncObj__sendAppendEntries()
        for message in leader.new(F):
            follower.deliver(L, message)
        for message in follower.new(L):
            if message["type"] == "next_node_idx":
                leader.deliver(F, message)
        leader.raft._SyncObj__sendAppendEntries()
        chunks = [message for message in leader.new(F) if "serialized" in message]
        assert chunks and chunks[-1]["serialized"][2]

        clear = Journal.clear

        def killed_after(journal: Journal) -> None:
            clear(journal)
            raise _Killed

        monkeypatch.setattr(Journal, "clear", killed_after)
        for chunk in chunks[:-1]:
            follower.deliver(L, chunk)
        try:
            follower.deliver(L, chunks[-1])
        except IndexError:
            pass  # pysyncobj's bare ``except:`` swallows the kill; code after it (dead in a killed process) fails
        monkeypatch.setattr(Journal, "clear", clear)
    finally:
        leader.stop()
        follower.stop()  # closing writes nothing a kill would not have left in the page cache

    restarted = _Node(tmp_path, F, [L, C])  # IndexError in _swap_journal (journal[-1] of an empty journal)
    try:
        restarted.tick()
        assert restarted.raft.raftLastApplied == 5 and restarted.store.get("ns", "c") is not None
    finally:
        restarted.stop()
