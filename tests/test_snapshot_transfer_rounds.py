"""A leader pacing a snapshot transfer does not spin its Raft thread while the follower waits for chunks.

pysyncobj asks a follower being sent a snapshot for chunks in a loop that a missing chunk does not end:
while the transfer was paced, every call of ``SyncObj.__sendAppendEntries`` spun for a whole heartbeat
period and sent the follower an empty chunk message per turn (measured at 3 M contexts: every write took
100-300 ms while a 6.6 GB snapshot streamed). Three in-process voters: two take writes and compact their
logs, the third starts empty and is sent the snapshot at a pace slow enough that most calls find no
chunk to send. Each call may send that follower at most one message without a chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpdb.ops.localcluster import free_port
from mcpdb.raft import snapshotter
from mcpdb.raft.replication import Replication
from mcpdb.store.commands import Batch, BatchPut
from mcpdb.store.state_machine import ContextStore
from tests.raft_helpers import in_process_voter

CONTEXTS = 6000  # about 7 MB of snapshot: several seconds at the pace below
PACE_BYTES_PER_S = 2 << 20
TIMEOUT_S = 60.0


def _wait(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


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


@pytest.fixture
def voters(tmp_path: Path) -> Iterator[_Voters]:
    cluster = _Voters(tmp_path)
    try:
        yield cluster
    finally:
        for replication, store in cluster.started.values():
            replication.close()
            store.close()


def test_a_paced_transfer_sends_at_most_one_empty_round_per_call(
    voters: _Voters, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [voters.start("a")[0], voters.start("b")[0]]
    _wait(lambda: any(replication.is_leader() for replication in first), "no leader was elected")
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
    _wait(lambda: newcomer_store.applied_index() >= target, "the new voter did not catch up")
    assert newcomer_store.get("ns", f"c{CONTEXTS - 1}") is not None
    assert sum(1 for count in empty_rounds if count) > 10, "the transfer was never paced: the test proves nothing"
    assert max(empty_rounds) <= 1, f"a call spun, sending {max(empty_rounds)} messages without a chunk"
