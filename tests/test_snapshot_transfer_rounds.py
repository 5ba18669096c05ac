"""Snapshot transfers from a leader: paced without spinning its Raft thread, and cancelled when a
read-only replica being sent one leaves.

pysyncobj asks a follower being sent a snapshot for chunks in a loop that a missing chunk does not end:
while the transfer was paced, every call of ``SyncObj.__sendAppendEntries`` spun for a whole heartbeat
period and sent the follower an empty chunk message per turn (measured at 3 M contexts: every write took
100-300 ms while a 6.6 GB snapshot streamed). Three in-process voters: two take writes and compact their
logs, the third starts empty and is sent the snapshot at a pace slow enough that most calls find no
chunk to send. Each call may send that follower at most one message without a chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpdb.ops.localcluster import free_port
from mcpdb.raft import snapshotter
from mcpdb.raft.replication import Replication
from mcpdb.store.commands import Batch, BatchPut
from mcpdb.store.state_machine import ContextStore
from tests.raft_helpers import in_process_voter, wait_until

CONTEXTS = 6000  # about 7 MB of snapshot: several seconds at the pace below
PACE_BYTES_PER_S = 2 << 20
TIMEOUT_S = 60.0


class _Voters:
    """Voters a, b and c of one cluster, in process; c is started by the test, after the others."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.addresses = {name: f"127.0.0.1:{free_port()}" for name in ("a", "b", "c")}
        self.started: dict[str, tuple[Replication, ContextStore]] = {}

    def start(self, name: str) -> tuple[Replication, ContextStore]:
        address = self.addresses[name]
        peers = [other for other in self.addresses.values() if other != address]
        self.started[name] = in_process_voter(self.root / name, address, peers)
        return self.started[name]

    def start_replica(self, name: str) -> tuple[Replication, ContextStore]:
        """A read-only replica of the voters, which never vote for it (it is not among their peers)."""
        self.started[name] = in_process_voter(self.root / name, None, list(self.addresses.values()))
        return self.started[name]

    def stop(self, name: str) -> None:
        replication, store = self.started.pop(name)
        replication.close()
        store.close()

    def leader_with_a_snapshot(self) -> Replication:
        """Start voters a and b, write ``CONTEXTS`` contexts and compact both logs: a node started now is
        sent a snapshot. Returns the leader."""
        first = [self.start("a")[0], self.start("b")[0]]
        wait_until(lambda: any(replication.is_leader() for replication in first), "no leader was elected", TIMEOUT_S)
        leader = next(replication for replication in first if replication.is_leader())

        async def load_and_compact() -> None:
            for start in range(0, CONTEXTS, 500):
                puts = tuple(
                    BatchPut(f"c{i}", {"kind": "memory", "facts": [f"{i:06d} " + "x" * 1000]}, None, None)
                    for i in range(start, start + 500)
                )
                await leader.propose(Batch("ns", puts, 1.0), TIMEOUT_S)
            for replication in first:
                result = await replication.snapshot(TIMEOUT_S)
                assert result["written"], result

        asyncio.run(load_and_compact())
        return leader


@pytest.fixture
def voters(tmp_path: Path) -> Iterator[_Voters]:
    cluster = _Voters(tmp_path)
    try:
        yield cluster
    finally:
        for name in list(cluster.started):
            cluster.stop(name)


def test_a_paced_transfer_sends_at_most_one_empty_round_per_call(
    voters: _Voters, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = voters.leader_with_a_snapshot()
    monkeypatch.setattr(snapshotter, "STREAM_BYTES_PER_S", PACE_BYTES_PER_S)
    raft = leader._raft
    empty_rounds: list[int] = [0]  # messages without a chunk per call of __sendAppendEntries, newest last
    send, send_append_entries = raft._transport.send, raft._SyncObj__sendAppendEntries

    def counting_send(node: Any, message: Any) -> bool:
        if isinstance(message, dict) and "serialized" in message and message["serialized"] is None:
            empty_rounds[-1] += 1
        return bool(send(node, message))

    def counting_call() -> None:
        empty_rounds.append(0)
        send_append_entries()

    raft._transport.send = counting_send
    raft._SyncObj__sendAppendEntries = counting_call
    _, newcomer_store = voters.start("c")
    target = raft.status()["commit_index"]
    wait_until(lambda: newcomer_store.applied_index() >= target, "the new voter did not catch up", TIMEOUT_S)
    assert newcomer_store.get("ns", f"c{CONTEXTS - 1}") is not None
    assert sum(1 for count in empty_rounds if count) > 10, "the transfer was never paced: the test proves nothing"
    assert max(empty_rounds) <= 1, f"a call spun, sending {max(empty_rounds)} messages without a chunk"


def test_a_transfer_to_a_replica_that_leaves_is_cancelled(voters: _Voters, monkeypatch: pytest.MonkeyPatch) -> None:
    """pysyncobj forgets a read-only replica that disconnects without cancelling its transfer: the open
    file stayed, and the transfer held back the leader's snapshots for ``TRANSFER_HOLD_S``."""
    leader = voters.leader_with_a_snapshot()
    # After the pace's first 4 MiB of credit, the rest of the ~7 MB takes about a minute: the replica
    # leaves mid-transfer, and the transfer cannot end by itself while the test waits.
    monkeypatch.setattr(snapshotter, "STREAM_BYTES_PER_S", 64 << 10)
    snapshots = leader._raft.snapshots
    _, replica_store = voters.start_replica("r")
    wait_until(lambda: snapshots.sending, "no transfer to the replica began", TIMEOUT_S)
    assert replica_store.snapshots_installed == 0
    voters.stop("r")
    wait_until(lambda: not snapshots.sending, "the transfer to the replica that left was never cancelled", TIMEOUT_S)
    assert not snapshots._outgoing, "the snapshot file is still open for the replica"
