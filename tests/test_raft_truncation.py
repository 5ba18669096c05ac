"""pysyncobj 0.3.17 truncates acknowledged, applied entries; mcpdb's transport stops it.

Deterministic: a real pysyncobj follower (no ticking thread, no peers up) is
fed the exact messages a pipelining leader produces - entries 2..4, then a
re-send of entry 3 after a stale reply moved the leader's next index back.
The stress test repeats the measured load on three processes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.transport import TCPTransport

from benchmarks.raft_stress import run_stress
from mcpdb.ops.localcluster import free_port
from mcpdb.raft.pysyncobj_bridge import KEEPALIVE, transport_class

NO_OP = b"\x01"  # pysyncobj's _COMMAND_TYPE.NO_OP: applies as nothing


def _follower(transport: type) -> tuple[SyncObj, list[dict]]:
    leader_addr = f"127.0.0.1:{free_port()}"
    follower = SyncObj(
        f"127.0.0.1:{free_port()}",
        [leader_addr],
        SyncObjConf(autoTick=False, appendEntriesUseBatch=False),
        transportClass=transport,
    )
    sent: list[dict] = []
    # Raft messages only: mcpdb's transport also sends idle-link keepalives, which carry no state.
    follower._SyncObj__transport.send = lambda node, message: (
        (message.get("type") == KEEPALIVE or sent.append(message)) or True
    )
    return follower, sent


def _deliver(follower: SyncObj, message: dict) -> None:
    transport = follower._SyncObj__transport
    transport._onMessageReceived(next(iter(follower.otherNodes)), message)
    follower.doTick(0)


def _log_indexes(follower: SyncObj) -> list[int]:
    log = follower._SyncObj__raftLog
    return [log[i][1] for i in range(len(log))]


@pytest.fixture
def critical_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.CRITICAL)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pysyncobj.syncobj")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _replay_pipelined_resend(transport: type) -> tuple[SyncObj, list[dict]]:
    follower, sent = _follower(transport)
    entries = [(NO_OP, index, 1) for index in (2, 3, 4)]
    _deliver(
        follower,
        {"type": "append_entries", "term": 1, "commit_index": 4, "prevLogIdx": 1, "prevLogTerm": 0, "entries": entries},
    )
    assert follower.raftLastApplied == 4
    assert sent[-1] == {"type": "next_node_idx", "next_node_idx": 5, "reset": False, "success": True}
    _deliver(
        follower,
        {
            "type": "append_entries",
            "term": 1,
            "commit_index": 4,
            "prevLogIdx": 2,
            "prevLogTerm": 1,
            "entries": entries[1:2],
        },
    )
    return follower, sent


def test_stock_pysyncobj_drops_an_acknowledged_applied_entry(critical_records) -> None:
    follower, _ = _replay_pipelined_resend(TCPTransport)
    try:
        # Entry 4 was acknowledged (next_node_idx 5) and applied, and is gone:
        # with the leader dead, this follower and a third node that never got
        # entry 4 form a majority that can elect a leader without it.
        assert _log_indexes(follower) == [1, 2, 3]
        assert any("truncating already-applied" in r.getMessage() for r in critical_records)
    finally:
        follower.destroy()


def test_guarded_transport_keeps_matching_entries(critical_records) -> None:
    follower, sent = _replay_pipelined_resend(transport_class(durable=False))
    try:
        assert _log_indexes(follower) == [1, 2, 3, 4]
        assert critical_records == []
        assert sent[-1]["success"] and sent[-1]["next_node_idx"] == 5
    finally:
        follower.destroy()


def test_guarded_transport_still_truncates_a_real_conflict(critical_records) -> None:
    follower, sent = _follower(transport_class(durable=False))
    try:
        _deliver(
            follower,
            {
                "type": "append_entries",
                "term": 1,
                "commit_index": 2,
                "prevLogIdx": 1,
                "prevLogTerm": 0,
                "entries": [(NO_OP, i, 1) for i in (2, 3, 4)],
            },
        )
        # A new leader (term 2) never had entries 3-4 of term 1, which were not committed.
        _deliver(
            follower,
            {
                "type": "append_entries",
                "term": 2,
                "commit_index": 2,
                "prevLogIdx": 2,
                "prevLogTerm": 1,
                "entries": [(NO_OP, 3, 2)],
            },
        )
        log = follower._SyncObj__raftLog
        assert [(log[i][1], log[i][2]) for i in range(len(log))] == [(1, 0), (2, 1), (3, 2)]
        assert critical_records == []
        assert sent[-1]["success"] and sent[-1]["next_node_idx"] == 4
    finally:
        follower.destroy()


@pytest.mark.integration
def test_stress_three_processes_no_truncation_when_guarded() -> None:
    """The measured load (16 sync writers, unbatched) on three processes: zero CRITICAL records."""
    result = run_stress(guarded=True, seconds=4)
    assert result.critical_truncations == 0
    assert result.replicas_identical
    assert result.commits_per_s > 500


def _votes_for_candidate_without_entry_4(transport: type) -> bool:
    """Leader L committed entry 4 on {L, F1}; F1 then gets a stale re-send; L dies.

    F2, which never received entry 4, asks F1 for its vote. Raft's election
    restriction must refuse it (F1's log is more up to date); a vote means
    F2 can become leader of {F1, F2} without an acknowledged, committed write.
    """
    follower, sent = _replay_pipelined_resend(transport)
    try:
        candidate = next(iter(follower.otherNodes))
        sent.clear()
        follower._SyncObj__transport._onMessageReceived(
            candidate, {"type": "request_vote", "term": 2, "last_log_index": 3, "last_log_term": 1}
        )
        return any(m.get("type") == "response_vote" for m in sent)
    finally:
        follower.destroy()


def test_stock_pysyncobj_can_elect_a_leader_without_an_acknowledged_write() -> None:
    assert _votes_for_candidate_without_entry_4(TCPTransport)


def test_guarded_follower_refuses_the_vote() -> None:
    assert not _votes_for_candidate_without_entry_4(transport_class(durable=False))
