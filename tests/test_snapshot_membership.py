"""A node restarted from its own snapshot holds the voters its log gives, not a change that was rolled back.

pysyncobj's snapshot records the voters as the node holds them when it asks for the snapshot
(``SyncObj.__tryLogCompaction``: ``cluster = self.__otherNodes | {self.__selfNode}``), and a membership change
takes effect when it is appended, not when it commits: a change appended after the snapshot's index and not
yet committed is recorded in it. Raft then rolls the change back if a new leader replaces the entry
(``__onMessageReceived``, ``__doChangeCluster(..., reverse=True)``), in memory only: the snapshot file keeps
it, and a restart loads the snapshot's voters (``__loadDumpFile`` -> ``__updateClusterConfiguration``) with
nothing left in the journal to undo the change. The same file is what the node, leading again, sends a
lagging or wiped follower, which takes the same voters.

Here the leader A of {A, B, C} appends the removal of C, writes a snapshot (its journal's size trigger, or
``POST /v1/node/snapshot``) and is deposed before the removal commits; B's entry replaces it and A holds
A, B, C again. Restarted, A holds A and B: it refuses C's connections and counts majorities of two. Off by
one voter, every majority of A's view still meets every majority of the cluster's; off by two (a later
change pending on the real leader, e.g. adding E to {A, B, C, D} while A believes {A, B, C}) A is elected
and commits with {A, B} while the leader commits with {C, D, E}: two majorities.

mcpdb records the voters as of the snapshot's index instead (``RaftNode.voters_at``). Found by an audit in
session 24; the test failed on every run before.

Deterministic: real mcpdb Raft nodes ticked by hand (no thread), fed their peers' messages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mcpdb.ops.localcluster import free_port
from mcpdb.store.commands import Put, encode
from tests.raft_helpers import in_process_voter, ticked_by_hand

NO_OP = b"\x01"  # pysyncobj's _COMMAND_TYPE.NO_OP
MEMBERSHIP = b"\x03"  # pysyncobj's _COMMAND_TYPE.MEMBERSHIP


@pytest.fixture(autouse=True)
def _ticked_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    ticked_by_hand(monkeypatch, lambda transport, to, message: True)


def _start(root: Path, address: str, peers: list[str]) -> tuple[Any, Any]:
    replication, store = in_process_voter(root, address, peers)
    raft = replication._raft
    raft._SyncObj__connectedNodes.update(raft.otherNodes)
    raft.doTick(0)  # its first tick loads the snapshot, if any
    raft._SyncObj__connectedNodes.update(raft.otherNodes)
    return replication, store


def _stop(replication: Any, store: Any) -> None:
    raft = replication._raft
    raft._doDestroy()
    raft.stall_watch.stop()
    raft.snapshots.close()
    store.close()


def _deliver(raft: Any, sender: str, message: dict[str, Any]) -> None:
    peer = next(node for node in raft.otherNodes if node.address == sender)
    raft._SyncObj__transport._onMessageReceived(peer, message)
    raft.doTick(0)


def _ack(raft: Any, sender: str, next_index: int) -> None:
    reply = {"type": "next_node_idx", "next_node_idx": next_index, "reset": False, "success": True}
    _deliver(raft, sender, {**reply, "term": raft.raftCurrentTerm})


def test_a_rolled_back_membership_change_stays_rolled_back_after_a_restart(tmp_path: Path) -> None:
    A, B, C = (f"127.0.0.1:{free_port()}" for _ in range(3))
    replication, store = _start(tmp_path, A, [B, C])
    raft = replication._raft
    try:
        raft._SyncObj__raftElectionDeadline = 0
        raft.doTick(0)
        _deliver(raft, B, {"type": "response_vote", "term": raft.raftCurrentTerm})
        assert raft.is_leader() and raft.raftCurrentTerm == 1
        _ack(raft, B, 3)
        raft.propose(encode(Put("ns", "x", {"kind": "memory", "facts": ["x"]}, None, None, 1.0)), lambda *_: None)
        raft.doTick(0)
        _ack(raft, B, 4)
        raft.doTick(0)
        assert raft.raftLastApplied == 3 and store.get("ns", "x") is not None
        # The operator removes C: A appends the change (index 4), in effect at once, and is cut off.
        raft.change_membership("remove", C, lambda refusal: None)
        raft.doTick(0)
        assert raft._SyncObj__raftLog[-1][1] == 4 and raft.voters() == sorted([A, B])
        # A writes a snapshot meanwhile, of its last applied entry (3).
        raft.forceLogCompaction()
        deadline = time.monotonic() + 30
        while raft.snapshots.written == 0:
            assert time.monotonic() < deadline, "no snapshot written"
            raft.doTick(0)
            time.sleep(0.01)
        assert raft.snapshots.last is not None and raft.snapshots.last.index == 3
        # B leads term 2 (elected by B and C) and replaces index 4: the removal is rolled back on A.
        replaced = {"type": "append_entries", "term": 2, "commit_index": 4, "prevLogIdx": 3, "prevLogTerm": 1}
        _deliver(raft, B, {**replaced, "entries": [(NO_OP, 4, 2)]})
        assert not raft.is_leader()
        assert [(entry[1], entry[2]) for entry in raft._SyncObj__raftLog[:]][-2:] == [(3, 1), (4, 2)]
        assert raft.voters() == sorted([A, B, C])
    finally:
        _stop(replication, store)

    # A restarts (a crash, an upgrade): nothing in its log removes C.
    replication, store = _start(tmp_path, A, [B, C])
    raft = replication._raft
    try:
        log = [(entry[1], entry[2], entry[0][:1]) for entry in raft._SyncObj__raftLog[:]]
        assert all(kind != MEMBERSHIP for _, _, kind in log), log
        assert raft.voters() == sorted([A, B, C]), (
            f"restarted, A's voters are {raft.voters()} of {sorted([A, B, C])}: its snapshot (index 3) recorded "
            f"the removal of C appended at index 4 and rolled back; its log {[(i, t) for i, t, _ in log]} "
            "holds no membership change"
        )
    finally:
        _stop(replication, store)
