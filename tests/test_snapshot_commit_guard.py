"""A deposed leader's entries that never committed are never applied, even when the new leader sends it
a snapshot (whose messages carry the leader's commit index but nothing about the follower's log)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.transport import TCPTransport

from mcpdb.store.commands import Put
from tests.raft_helpers import in_process_cluster, wait_until

HELD_S = 3.0  # how long the snapshot's transfer to the old leader cannot finish
PROPOSAL_TIMEOUT_S = 15.0  # the cut-off leader's write waits this long: past the new leader's snapshot


def _put(key: str) -> Put:
    return Put("ns", key, {"kind": "memory", "facts": [key]}, None, None, 1.0)


def test_a_deposed_leaders_uncommitted_tail_is_not_applied_while_a_snapshot_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader is cut off and a write is proposed to it (appended to its log only); the others
    elect a leader, write past it and compact their logs. Healed, the old leader is sent the new
    one's snapshot, over a link on which the transfer's last chunk is late: its write must never be
    applied, nor its writer told it succeeded (it was, before the snapshot's messages were kept from
    committing: the write then vanished with the snapshot's install)."""
    cut: set[str] = set()  # addresses that neither send nor receive
    last_chunk_held_until = [0.0]  # a slow link: the snapshot's last chunk arrives late
    send = TCPTransport.send

    def partitioned_send(transport: Any, node: Any, message: Any) -> bool:
        if transport._selfNode.address in cut or node.address in cut:
            return False
        chunk = message.get("serialized") if isinstance(message, dict) else None
        if chunk is not None and chunk[2] and time.monotonic() < last_chunk_held_until[0]:
            return False  # (data, first, last): the leader starts the transfer over
        return bool(send(transport, node, message))

    monkeypatch.setattr(TCPTransport, "send", partitioned_send)
    with in_process_cluster(tmp_path, request_timeout=PROPOSAL_TIMEOUT_S) as voters:
        (old, old_store), (new, _), (third, _) = voters
        asyncio.run(old.propose(_put("committed"), 10.0))
        wait_until(lambda: all(v.status()["applied_index"] == old.status()["applied_index"] for v, _ in voters), "sync")
        cut.add(old._raft.selfNode.address)
        outcome: list[Any] = []

        def propose_lost() -> None:
            try:
                outcome.append(asyncio.run(old.propose(_put("lost"), PROPOSAL_TIMEOUT_S)))
            except Exception as error:  # noqa: BLE001 - the outcome is what is checked
                outcome.append(error)

        proposer = threading.Thread(target=propose_lost)
        proposer.start()
        wait_until(lambda: new.is_leader() or third.is_leader(), "no new leader", timeout=20)
        leader = new if new.is_leader() else third
        for n in range(20):
            asyncio.run(leader.propose(_put(f"after-{n}"), 10.0))
        asyncio.run(leader.snapshot(30.0))
        wait_until(lambda: leader.status()["log_first_index"] > old.status()["commit_index"] + 2, "no compaction")
        last_chunk_held_until[0] = time.monotonic() + HELD_S
        cut.clear()
        proposer.join(PROPOSAL_TIMEOUT_S + 5)
        wait_until(lambda: old_store.get("ns", "after-19") is not None, "the old leader never caught up", timeout=30)
        assert old_store.get("ns", "lost") is None
        assert outcome and isinstance(outcome[0], Exception), (
            f"a write that never committed was acknowledged: {outcome}"
        )
