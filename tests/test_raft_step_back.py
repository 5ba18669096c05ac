"""A follower's answers to AppendEntries past its log (``log_guard.StepBack``) in the cases that reviews found
stalled by a rule for them; each passes with pysyncobj's own answers as with StepBack's.

1. A follower killed within a second of a snapshot install restarts with a commit index below its
   journal's first index (``Journal.clear`` stored the meta with the old one; the new one is stored at the
   next tick or term change). A first rule, "commit + 1" whenever the last entry is of another term,
   pointed the leader below its log again, for ever.
2. A new leader whose tail past its commit index is of the old term, and which needs this follower to
   commit (the third voter down), behind a connection whose backlog drops batches of entries
   (``_connection_backed_up``): that rule re-sent the same window every round, and the leader's commit
   index could not move. Scaled down (batches of 600 bytes, a backlog of 1,500), as
   ``tests/test_raft_divergent_tail.py``'s "tail" mode scales its tail.
3. A mismatch under a snapshot installed since, or at its first entry (StepBack's first versions kept
   it, and the leader re-sent its snapshot every round).
4. A stepped-back follower still reports its leader's commit index (its lag, ``/readyz``).

Real nodes ticked by hand; messages relayed between them explicitly.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from mcpdb.ops.localcluster import free_port
from mcpdb.raft import journal as journal_module
from mcpdb.raft import pysyncobj_bridge
from tests.test_raft_divergent_tail import _next_index, _setup, _setup_with_a_long_tail
from tests.test_snapshot_install import _Node, _put, _ticked_by_hand  # noqa: F401 - the fixture is autouse

ROUNDS = 30
INSTALL_ROUNDS = 12
FIRST_ENTRY_ROUNDS = 12

_PENDING: dict[tuple[int, str], list[dict[str, Any]]] = {}


def _take(src: _Node, dst_addr: str) -> list[dict[str, Any]]:
    """What src sent dst_addr since last taken (``_Node.new`` consumes every recipient's messages at once)."""
    fresh, src.read = src.sent[src.read :], len(src.sent)
    for address, message in fresh:
        _PENDING.setdefault((id(src), address), []).append(message)
    return _PENDING.pop((id(src), dst_addr), [])


def _relay(src: _Node, src_addr: str, dst: _Node, dst_addr: str, kind: str) -> list[dict[str, Any]]:
    sent = [m for m in _take(src, dst_addr) if m["type"] == kind]
    for m in sent:
        dst.deliver(src_addr, m)
    return sent


def _lead_with_three_writes(leader: _Node, address: str, followers: tuple[tuple[_Node, str], ...]) -> None:
    """``leader`` leads term 1 (a follower's vote) and 3..5 are on every voter, committed."""
    leader.stand(followers[-1][1])
    for key in "xyz":
        leader.raft.propose(_put(key), lambda *_: None)
    for _ in range(3):
        leader.tick()
        for follower, follower_address in followers:
            _relay(leader, address, follower, follower_address, "append_entries")
            _relay(follower, follower_address, leader, address, "next_node_idx")
    assert all(follower.raft.raftCommitIndex == 5 for follower, _ in followers)


def _writes_acknowledged_by(leader: _Node, voter: str, follower: str) -> None:
    """Three more writes on ``leader``, acknowledged by ``voter`` (a hand-made answer); what it sent
    ``follower`` meanwhile is set aside."""
    for key in "xyz":
        leader.raft.propose(_put(key), lambda *_: None)
    leader.tick()
    through = leader.log()[-1][0] + 1
    leader.deliver(
        voter, {"type": "next_node_idx", "next_node_idx": through, "reset": False, "success": True, "term": 4}
    )
    _take(leader, follower)


def _backed_up_link(monkeypatch: pytest.MonkeyPatch, leader: _Node, follower: str) -> Any:
    """The link from ``leader`` to ``follower`` backs up: what it sent and the follower has not read yet
    counts against a backlog of 1,500 bytes. Returns the leader's transport."""
    monkeypatch.setattr(pysyncobj_bridge, "MAX_BACKLOG", 1500)
    transport = leader.raft._SyncObj__transport
    transport._backlog = lambda node: (
        sum(len(pickle.dumps(m)) for address, m in leader.sent[leader.read :] if address == follower)
        + sum(len(pickle.dumps(m)) for m in _PENDING.get((id(leader), follower), []))
    )
    return transport


def _rounds_until_caught_up(a: _Node, b: _Node, A: str, B: str, rounds: int) -> list[Any]:  # noqa: N803
    """Up to ``rounds`` round trips in which B sends twice before A's answers return (the next period's
    heartbeat leaves first), until A's log ends as B's; per round: whole snapshots sent, the prevLogIdx
    sent, A's answers, A's first and last index."""
    trace: list[Any] = []
    for _ in range(rounds):
        b.raft._SyncObj__sendAppendEntries()
        b.raft._SyncObj__sendAppendEntries()
        sent = _relay(b, B, a, A, "append_entries")
        replies = _relay(a, A, b, B, "next_node_idx")
        trace.append(
            (
                sum(1 for m in sent if m.get("serialized") and m["serialized"][2]),
                [m.get("prevLogIdx") for m in sent if "prevLogIdx" in m],
                [(m["next_node_idx"], m["reset"]) for m in replies],
                a.log()[0][0],
                a.log()[-1][0],
            )
        )
        if a.log()[-1] == b.log()[-1]:
            break
    return trace


def test_follower_with_commit_below_its_first_index_catches_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    A, B, C = (f"127.0.0.1:{free_port()}" for _ in range(3))
    a, b, c = _Node(tmp_path, A, [B, C]), _Node(tmp_path, B, [A, C]), _Node(tmp_path, C, [A, B])
    restarted = None
    try:
        _lead_with_three_writes(b, B, ((a, A), (c, C)))
        # A cut off; 6..9 on B and C, committed; B compacts at 9 (its log 8..9). C does not compact.
        for key in "defg":
            b.raft.propose(_put(key), lambda *_: None)
        for _ in range(3):
            b.tick()
            _relay(b, B, c, C, "append_entries")
            _relay(c, C, b, B, "next_node_idx")
        _take(b, A)
        assert b.raft.raftLastApplied == 9
        b.snapshot()
        assert b.log()[0][0] == 8
        _take(b, A)
        # A hears B again: a reset, then B's snapshot at 9, which A installs (commit 9 in memory only).
        b.raft._SyncObj__sendAppendEntries()
        _relay(b, B, a, A, "append_entries")
        _relay(a, A, b, B, "next_node_idx")
        b.raft._SyncObj__sendAppendEntries()
        chunks = [m for m in _take(b, A) if "serialized" in m]
        assert chunks and chunks[-1]["serialized"][2]
        # A is killed within a second of the install: the meta holds what Journal.clear stored (commit 5).
        with pytest.MonkeyPatch.context() as killed:
            killed.setattr(journal_module._MetaSlots, "store_if_changed", lambda self: None)
            for chunk in chunks:
                a.deliver(B, chunk)
            assert a.raft.raftLastApplied == 9 and a.log()[0][0] == 8
            a.stop()
        # While A is down B writes 10..11 on C, then C leads term 2 (B's vote); C's log 1..12, uncompacted.
        for key in "hi":
            b.raft.propose(_put(key), lambda *_: None)
        b.tick()
        _relay(b, B, c, C, "append_entries")
        _take(c, B)
        assert c.log()[-1] == (11, 1)
        c.stand(B)
        # A restarts.
        restarted = _Node(tmp_path, A, [B, C])
        restarted.tick()
        _take(c, A)
        trace = []
        for _ in range(ROUNDS):
            c.raft._SyncObj__sendAppendEntries()
            sent = _relay(c, C, restarted, A, "append_entries")
            replies = _relay(restarted, A, c, C, "next_node_idx")
            trace.append(([m.get("prevLogIdx") for m in sent], [(m["next_node_idx"], m["reset"]) for m in replies]))
            if restarted.log()[-1] == c.log()[-1]:
                break
        assert restarted.log()[-1] == c.log()[-1], (
            f"after {ROUNDS} rounds A's log is {restarted.log()} (commit {restarted.raft.raftCommitIndex}), "
            f"C's ends {c.log()[-1]}; (prevLogIdx sent, replies) per round: {trace[:4]}"
        )
    finally:
        for node in (b, c) + ((restarted,) if restarted else ()):
            node.stop()


def test_new_leaders_uncommitted_tail_reaches_a_follower_through_a_backed_up_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    A, B, C = (f"127.0.0.1:{free_port()}" for _ in range(3))
    a, b, c = _Node(tmp_path, A, [B, C]), _Node(tmp_path, B, [A, C]), _Node(tmp_path, C, [A, B])
    try:
        _lead_with_three_writes(b, B, ((a, A), (c, C)))
        # A cut off. B appends 6..45 and sends them to C; C's acknowledgements are lost with B (B dies).
        for i in range(40):
            b.raft.propose(_put(f"k{i}"), lambda *_: None)
        b.tick()
        _relay(b, B, c, C, "append_entries")
        assert c.log()[-1] == (45, 1) and c.raft.raftCommitIndex == 5
        # C leads term 2 with A's vote: its no-op is 46, its commit 5, and B is down: it needs A.
        c.stand(A)
        transport = c.raft._SyncObj__transport
        c.raft._SyncObj__conf.appendEntriesBatchSizeBytes = 600
        monkeypatch.setattr(pysyncobj_bridge, "MAX_BACKLOG", 1500)
        # The connection to A: what C sent A and A has not read yet.
        transport._backlog = lambda node: (
            sum(len(pickle.dumps(m)) for addr, m in c.sent[c.read :] if addr == A)
            + sum(len(pickle.dumps(m)) for m in _PENDING.get((id(c), A), []))
        )
        _take(c, A)
        trace = []
        for _ in range(ROUNDS):
            c.raft._SyncObj__sendAppendEntries()
            c.raft._SyncObj__sendAppendEntries()  # the next period's heartbeat leaves before A's answers return
            sent = _relay(c, C, a, A, "append_entries")
            replies = _relay(a, A, c, C, "next_node_idx")
            trace.append(
                (
                    a.log()[-1][0],
                    [m.get("prevLogIdx") for m in sent],
                    [(m["next_node_idx"], m["reset"]) for m in replies],
                )
            )
            c.tick()
            if c.raft.raftCommitIndex == 46:
                break
        assert c.raft.raftCommitIndex == 46 and a.log()[-1] == (46, 2), (
            f"after {ROUNDS} rounds C's commit is {c.raft.raftCommitIndex}, A's log ends {a.log()[-1]} "
            f"(commit {a.raft.raftCommitIndex}); dropped batches {transport.deferred_append_entries}; "
            f"(A's last, prevLogIdx sent, A's replies) per round: {trace[:4]}"
        )
    finally:
        for node in (a, b, c):
            node.stop()


@pytest.mark.parametrize("step_back", [True, False])
def test_a_mismatch_under_an_installed_snapshot_is_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step_back: bool
) -> None:
    """A mismatch the follower noted, then a snapshot installed over it: kept, it pointed every answer below
    the leader's snapshot, so the leader sent the whole snapshot again each round (behind a backed-up link
    no matching message came to clear it). Forgotten once below the log's first entry; with StepBack off
    (pysyncobj's answers) the run converges too. Found by a review; failed with the first StepBack."""
    a, b, A, B, C = _setup(tmp_path)
    _PENDING.clear()
    b.read, a.read = len(b.sent), len(a.sent)
    if not step_back:
        monkeypatch.setattr(a.raft._SyncObj__transport.step_back, "answer", lambda *args: None)
    try:
        # Probe until A has answered a mismatch (its 7 is term 1, B's is term 2): A's lowest is 7.
        for _ in range(2):
            b.raft._SyncObj__sendAppendEntries()
            _relay(b, B, a, A, "append_entries")
            _relay(a, A, b, B, "next_node_idx")
        assert _next_index(b, A) == 7
        if step_back:
            assert a.raft._SyncObj__transport.step_back._lowest == 7
        # B compacts past 7 and writes on (C acknowledges): A will get B's snapshot.
        b.snapshot()
        S = b.log()[1][0]
        _writes_acknowledged_by(b, C, A)
        transport = _backed_up_link(monkeypatch, b, A)
        trace = _rounds_until_caught_up(a, b, A, B, INSTALL_ROUNDS)
        assert a.log()[-1] == b.log()[-1], (
            f"snapshot at {S}; A's log {a.log()}, B's ends {b.log()[-1]}; dropped batches "
            f"{transport.deferred_append_entries}; per round (whole snapshots sent, prevLogIdx sent, A's replies, "
            f"A's first, A's last): {trace[-4:]}"
        )
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("step_back", [True, False])
def test_a_mismatch_at_the_snapshots_first_entry_is_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step_back: bool
) -> None:
    """The probe of a tail diverging at or below the leader's snapshot ends on a mismatch at the snapshot's
    first entry; the install makes that the follower's first entry, committed, and kept as the lowest it
    made the leader re-send its snapshot each round once the AppendEntries after the last chunk was lost.
    Found by a review; failed with ef68d19."""
    a, b, A, B = _setup_with_a_long_tail(tmp_path, tail=30, new_writes=8)  # A: 6..35 of term 1
    C = next(n.address for n in b.raft.otherNodes if n.address != A)
    _PENDING.clear()
    b.read, a.read = len(b.sent), len(a.sent)
    if not step_back:
        monkeypatch.setattr(a.raft._SyncObj__transport.step_back, "answer", lambda *args: None)
    try:
        b.snapshot()  # B: snapshot at 15, log 14..15
        S = b.log()[1][0]
        assert b.log()[0][0] == S - 1
        _writes_acknowledged_by(b, C, A)
        for _ in range(8):  # probes down to prev S-1, a mismatch on A
            b.raft._SyncObj__sendAppendEntries()
            _relay(b, B, a, A, "append_entries")
            _relay(a, A, b, B, "next_node_idx")
            if _next_index(b, A) == S - 1:
                break
        assert _next_index(b, A) == S - 1
        if step_back:
            assert a.raft._SyncObj__transport.step_back._lowest == S - 1
        _backed_up_link(monkeypatch, b, A)
        trace = _rounds_until_caught_up(a, b, A, B, FIRST_ENTRY_ROUNDS)
        refused = a.raft.snapshots.older_refused
        assert a.log()[-1] == b.log()[-1], (
            f"snapshot at {S}; A's log {a.log()}, B's ends {b.log()[-1]}; A refused {refused} snapshots; per round "
            f"(whole snapshots sent, prevLogIdx sent, A's replies, A's first, A's last): {trace[-4:]}"
        )
    finally:
        a.stop()
        b.stop()


def test_a_stepped_back_follower_reports_its_leaders_commit(tmp_path: Path) -> None:
    """A follower StepBack answers keeps the leader's commit index as the message said it (``follower_lag``,
    pysyncobj's onReady), though the message handed to pysyncobj carries its own: capped, its lag read 0
    while it was catching up, and ``/readyz`` said ready. Found by a review."""
    a, b, A, B = _setup_with_a_long_tail(tmp_path, tail=30, new_writes=8)
    _PENDING.clear()
    b.read, a.read = len(b.sent), len(a.sent)
    try:
        seen = []
        for _ in range(3):
            b.raft._SyncObj__sendAppendEntries()
            b.raft._SyncObj__sendAppendEntries()
            _relay(b, B, a, A, "append_entries")
            _relay(a, A, b, B, "next_node_idx")
            seen.append((a.raft._SyncObj__leaderCommitIndex, a.raft.raftLastApplied, b.raft.raftCommitIndex))
        assert all(leader_commit == b_commit for leader_commit, _, b_commit in seen), seen
    finally:
        a.stop()
        b.stop()
