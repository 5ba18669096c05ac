"""The Raft thread is woken by a proposal and does not sleep on work only it can finish.

pysyncobj's thread waits in poll for a socket, a wake-up or its tick period. mcpdb batches
AppendEntries per tick, a mode in which pysyncobj writes no wake-up for a proposal, so
``RaftNode._applyCommand`` writes one; and a lone voter's leader commits an entry at the tick after
it appended it, with no follower's answer to end the poll in between (every write waited the whole
50 ms tick). Here the tick period is raised to far beyond the proposal timeout once the node leads:
a proposal that waited for the period instead of a wake-up would time out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpdb.ops.localcluster import free_port
from mcpdb.raft.replication import Replication
from mcpdb.store.commands import Put
from tests.raft_helpers import in_process_voter

LONG_TICK_S = 60.0
PROPOSAL_TIMEOUT_S = 5.0


@pytest.fixture
def lone_voter(tmp_path: Path) -> Iterator[Replication]:
    replication, store = in_process_voter(tmp_path, f"127.0.0.1:{free_port()}", [])
    settings = replication.settings
    conf = replication._raft._SyncObj__conf
    try:
        deadline = time.monotonic() + 20
        while not replication.is_leader():
            assert time.monotonic() < deadline, "a lone voter did not elect itself"
            time.sleep(0.05)
        conf.autoTickPeriod = LONG_TICK_S
        yield replication
    finally:
        conf.autoTickPeriod = settings.tick_period
        # Out of its long poll, so that close does not wait for it (a CI run's teardown waited 60 s).
        # A tick takes its poll's timeout when it begins: the one that runs this first action may have
        # begun with the long period, so a second action ends that tick's poll; the next tick begins
        # with the short period.
        ran = threading.Event()
        replication._raft.call_in_raft_thread(ran.set)
        assert ran.wait(LONG_TICK_S + 5)
        replication._raft.call_in_raft_thread(lambda: None)
        replication.close()
        store.close()


def test_a_lone_voter_commits_each_write_without_waiting_out_its_tick(lone_voter: Replication) -> None:
    async def writes() -> list[int]:
        versions = []
        for i in range(5):
            put = Put("ns", f"k{i}", {"kind": "memory", "facts": [f"fact {i}"]}, None, None, 1.0)
            result = await lone_voter.propose(put, PROPOSAL_TIMEOUT_S)
            versions.append(result["version"])
        return versions

    versions = asyncio.run(writes())
    assert versions == sorted(versions) and len(set(versions)) == 5
    assert lone_voter.store.get("ns", "k4") is not None
