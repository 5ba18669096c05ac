"""A deposed leader's divergent tail is replaced, however many AppendEntries are in flight.

A fault run (``mcpdb jepsen --nemesis partition,partition-leader,kill,crash ... --compact
--background-load``, session 25) left n2 two minutes behind: it had led term 8 cut off and appended
3498..3499, which n3, leading term 9, replaced with its own; re-elected in term 16, n3 started n2's next
index at its last + 1. pysyncobj's follower answers an AppendEntries whose previous entry it lacks with a
reset to *its* last + 1 (3500), and one whose previous entry's term differs with a reset to prevLogIdx;
the leader applies every reset as it comes. Backing up past the tail takes one probe per entry, but
every other AppendEntries that leaves while a probe's answer is in flight (the rest of a long tail,
the next tick's writes under load) is past n2's log and answered "3500", which lands after the probe's
answer and undoes it: n3 sent prev 3499 for ever, n2 rejected it silently, and its election timer was
reset by every message. The follower now answers a message past its log no higher than its lowest mismatch of the
term (``log_guard.StepBack``). Diagnosed and reproduced by a helper; "load" and "tail" failed on
every run before (3 of 3), "idle" (one message per round trip) is the control.

Deterministic: real mcpdb Raft nodes ticked by hand; A plays n2, B n3, and C (n1) is hand-made messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcpdb.ops.localcluster import free_port
from tests.test_snapshot_install import _Node, _put, _ticked_by_hand  # noqa: F401 - the fixture is autouse

ROUNDS = 30
LONG_TAIL_ROUNDS = 60


def _ack(through: int, term: int) -> dict[str, Any]:
    return {"type": "next_node_idx", "next_node_idx": through + 1, "reset": False, "success": True, "term": term}


def _next_index(node: _Node, address: str) -> int:
    return next(index for peer, index in node.raft._SyncObj__raftNextIndex.items() if peer.address == address)


def _setup(tmp_path: Path) -> tuple[_Node, _Node, str, str, str]:
    """A led term 1 and holds 6..7 (term 1) that nobody else has; B led term 2 without A (6.. of term 2)
    and is re-elected in term 4 (as n3 in term 16): its next index for A starts past A's log."""
    A, B, C = (f"127.0.0.1:{free_port()}" for _ in range(3))
    a, b = _Node(tmp_path, A, [B, C]), _Node(tmp_path, B, [A, C])
    a.stand(C)
    for key in ("a", "b", "c"):  # 3..5 on every voter
        a.raft.propose(_put(key), lambda *_: None)
    a.tick()
    a.deliver(C, _ack(5, 1))
    a.tick()
    for message in a.new(B):
        if message["type"] == "append_entries":
            b.deliver(A, message)
    for message in b.new(A):
        if message["type"] == "next_node_idx":
            a.deliver(B, message)
    assert a.raft.raftCommitIndex == 5 and b.log()[-1] == (5, 1)
    # A is cut off: 6..7 stay on A (n2's 3498..3499, term 8).
    for key in ("d", "e"):
        a.raft.propose(_put(key), lambda *_: None)
    a.tick()
    a.new(B)
    assert a.log()[-1] == (7, 1)
    # B leads term 2 with C (n3's term 9): its own 6.. (no-op, writes); nothing reaches A.
    b.stand(C)
    for key in "fghijklm":
        b.raft.propose(_put(key), lambda *_: None)
        b.tick()
    b.deliver(C, _ack(b.log()[-1][0], 2))
    b.tick()
    # C's RequestVote in term 3 (n1/n2 standing after the heal) deposes B; B wins term 4 (n3's term 16).
    b.deliver(C, {"type": "request_vote", "term": 3, "last_log_term": 1, "last_log_index": 5})
    assert not b.raft.is_leader()
    b.stand(C)
    b.deliver(C, _ack(b.log()[-1][0], 4))
    b.tick()
    assert _next_index(b, A) > a.log()[-1][0] + 1  # B's last + 1 (sent, lost): past A's log
    a.new(B)
    b.new(A)
    return a, b, A, B, C


def _exchange(a: _Node, b: _Node, A: str, B: str, mode: str, round_: int) -> list[int]:
    """One round trip: what B sends A before A's answers come back; A takes it all, then B takes A's answers.

    idle: one heartbeat-period send (``__sendAppendEntries``), no new writes;
    load: a write each tick, two ticks (``_send_appended``) before the answers return;
    tail: idle, but B's tail past A's log is more than one batch (scaled down: n3's 8.9 MB tail past
    n2's 3499 against the 4 MiB ``appendEntriesBatchSizeBytes``), so one send pipelines several messages."""
    if mode == "load":
        for turn in range(2):
            b.raft.propose(_put(f"load-{round_}-{turn}"), lambda *_: None)
            b.tick()
    else:
        b.raft._SyncObj__sendAppendEntries()
    to_a = [m for m in b.new(A) if m["type"] == "append_entries"]
    assert to_a, "B sent A nothing"
    for message in to_a:
        a.deliver(B, message)
    replies = [m for m in a.new(B) if m["type"] == "next_node_idx"]
    for message in replies:
        b.deliver(A, message)
    return [m["next_node_idx"] if m["reset"] else -m["next_node_idx"] for m in replies]


@pytest.mark.parametrize("mode", ["idle", "load", "tail"])
def test_a_deposed_leaders_divergent_tail_is_replaced(tmp_path: Path, mode: str) -> None:
    a, b, A, B, C = _setup(tmp_path)
    if mode == "tail":
        b.raft._SyncObj__conf.appendEntriesBatchSizeBytes = 600  # a few entries per message
    try:
        trace = []
        for round_ in range(ROUNDS):
            trace.append((_next_index(b, A), _exchange(a, b, A, B, mode, round_)))
            if a.log()[-1][1] == 4:
                break
        assert a.raft._SyncObj__raftLeader is not None and a.raft._SyncObj__raftLeader.address == B
        assert a.raft.raftCurrentTerm == 4  # A hears B and follows it
        assert a.log()[-1][1] == 4 and (7, 1) not in a.log(), (
            f"after {ROUNDS} round trips A's log still ends {a.log()[-3:]} (B's: {b.log()[-1]}); "
            f"B's next index for A and A's replies each round (reset to n, or -n for success): {trace[:6]} ..."
        )
        assert a.log()[-1] == b.log()[-1]
    finally:
        a.stop()
        b.stop()


def _setup_with_a_long_tail(tmp_path: Path, tail: int, new_writes: int):
    A, B, C = (f"127.0.0.1:{free_port()}" for _ in range(3))
    a, b = _Node(tmp_path, A, [B, C]), _Node(tmp_path, B, [A, C])
    a.stand(C)
    for key in ("a", "b", "c"):
        a.raft.propose(_put(key), lambda *_: None)
    a.tick()
    a.deliver(C, _ack(5, 1))
    a.tick()
    for m in a.new(B):
        if m["type"] == "append_entries":
            b.deliver(A, m)
    for m in b.new(A):
        if m["type"] == "next_node_idx":
            a.deliver(B, m)
    assert a.raft.raftCommitIndex == 5 and b.log()[-1] == (5, 1)
    for i in range(tail):  # A cut off: a long uncommitted tail 6..5+tail of term 1
        a.raft.propose(_put(f"t{i}"), lambda *_: None)
    a.tick()
    a.new(B)
    b.stand(C)
    for i in range(new_writes):
        b.raft.propose(_put(f"w{i}"), lambda *_: None)
        b.tick()
    b.deliver(C, _ack(b.log()[-1][0], 2))
    b.tick()
    b.deliver(C, {"type": "request_vote", "term": 3, "last_log_term": 1, "last_log_index": 5})
    b.stand(C)
    b.deliver(C, _ack(b.log()[-1][0], 4))
    b.tick()
    a.new(B)
    b.new(A)
    return a, b, A, B


@pytest.mark.parametrize("mode", ["idle", "tail"])
def test_a_tail_longer_than_the_new_leaders_log_is_replaced(tmp_path: Path, mode: str) -> None:
    """A deposed leader's tail longer than the new leader's log: every AppendEntries of a pipelined send lands
    inside the follower's log and draws "reset to prevLogIdx", the highest landing last; a mismatch above the
    lowest is answered with the lowest (found by a review; "tail" failed before, "idle" is the control)."""
    a, b, A, B = _setup_with_a_long_tail(tmp_path, tail=30, new_writes=8)
    if mode == "tail":
        b.raft._SyncObj__conf.appendEntriesBatchSizeBytes = 600
    assert b.log()[-1][0] < a.log()[-1][0], (b.log()[-1], a.log()[-1])
    try:
        trace = []
        for round_ in range(LONG_TAIL_ROUNDS):
            trace.append((_next_index(b, A), _exchange(a, b, A, B, mode, round_)))
            if a.log()[-1] == b.log()[-1]:
                break
        assert a.log()[-1] == b.log()[-1], (
            f"A ends {a.log()[-1]}, B {b.log()[-1]}; last rounds (B's next for A, A's replies): {trace[-8:]}"
        )
    finally:
        a.stop()
        b.stop()
