"""A leader never counts an acknowledgement its follower sent in an earlier term toward a commit.

pysyncobj's ``next_node_idx`` carries no term, and the leader (``SyncObj.__onMessageReceived``) raises
a follower's match index from any successful one it receives while leading. Raft (Figure 2) has the
leader drop a reply whose term is not its current one: the reply only says the follower's log matched
the leader's log *of that term*. Here the leader of term 1 has three entries on one follower only;
that follower's acknowledgement is slow to arrive (a slow link, or its fsync before it releases the
acknowledgement). Meanwhile another leader (term 2) replaces those entries in the old leader's log,
and the old leader wins term 3 and appends a write at the same indexes. The late acknowledgement then
counts as a replica of the write, which commits, applies and is reported a success while only two of
five voters hold it: the other three (the term-2 leader, the slow follower, a third voter) can elect
a leader without it.

Deterministic: real pysyncobj objects behind mcpdb's transport, without ticking threads, fed the
messages their peers would send. (Found by an audit in session 24; it failed on every run before
``McpdbTransport`` stamped replies with their term.)
"""

from __future__ import annotations

from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.transport import TCPTransport

from mcpdb.ops.localcluster import free_port
from mcpdb.raft.pysyncobj_bridge import KEEPALIVE, transport_class

NO_OP = b"\x01"  # pysyncobj's _COMMAND_TYPE.NO_OP


class _Node(SyncObj):  # type: ignore[misc]
    @replicated  # type: ignore[untyped-decorator]
    def put(self, value: str) -> str:
        return value


Sent = list[tuple[str, dict[str, Any]]]
_SENT: dict[Any, Sent] = {}  # transport -> what it put on the wire, by recipient address


@pytest.fixture(autouse=True)
def _wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record what each transport writes to a connection (after ``McpdbTransport.send``'s own work)."""

    def record(transport: Any, to: Any, message: dict[str, Any]) -> bool:
        if message.get("type") != KEEPALIVE:
            _SENT.setdefault(transport, []).append((to.address, message))
        return True

    monkeypatch.setattr(TCPTransport, "send", record)


def _node(address: str, peers: list[str]) -> tuple[_Node, Sent]:
    node = _Node(
        address,
        peers,
        SyncObjConf(autoTick=False, appendEntriesUseBatch=True),
        transportClass=transport_class(durable=False),
    )
    sent = _SENT.setdefault(node._SyncObj__transport, [])
    # As if every peer were connected (only the sending loop and the election timer look).
    node._SyncObj__connectedNodes.update(node.otherNodes)
    return node, sent


def _peer(node: _Node, address: str) -> Any:
    return next(other for other in node.otherNodes if other.address == address)


def _deliver(node: _Node, sender: str, message: dict[str, Any]) -> None:
    node._SyncObj__transport._onMessageReceived(_peer(node, sender), message)
    node.doTick(0)


def _relay(sent: list[tuple[str, dict[str, Any]]], start: int, follower: _Node, sender: str, to: str) -> int:
    """Deliver to ``follower`` the AppendEntries ``sender`` sent it from position ``start`` on; the next position."""
    for address, message in sent[start:]:
        if address == to and message["type"] == "append_entries":
            _deliver(follower, sender, message)
    return len(sent)


def _stand(node: _Node, voters: list[str]) -> None:
    node._SyncObj__raftElectionDeadline = 0
    node.doTick(0)
    for voter in voters:
        _deliver(node, voter, {"type": "response_vote", "term": node.raftCurrentTerm})
    assert node._isLeader()


def _terms(node: _Node) -> list[tuple[int, int]]:
    log = node._SyncObj__raftLog
    return [(log[i][1], log[i][2]) for i in range(len(log))]


def test_an_acknowledgement_from_an_earlier_term_does_not_commit_an_entry_a_majority_lacks() -> None:
    L, F, M, A, B = (f"127.0.0.1:{free_port()}" for _ in range(5))
    everyone = [L, F, M, A, B]
    leader, leader_sent = _node(L, [a for a in everyone if a != L])
    follower, follower_sent = _node(F, [a for a in everyone if a != F])
    try:
        # Term 1: L leads (votes of A and B); every voter acknowledges its no-op (index 2), committed.
        _stand(leader, [A, B])
        assert leader.raftCurrentTerm == 1 and _terms(leader)[-1] == (2, 1)
        for voter in (M, A, B):
            _deliver(leader, voter, {"type": "next_node_idx", "next_node_idx": 3, "reset": False, "success": True})
        # F is a real follower: it takes what L sent it.
        relayed = _relay(leader_sent, 0, follower, L, F)
        assert leader.raftCommitIndex == 2
        # L appends three writes of term 1; only F receives them.
        outcomes: dict[str, Any] = {}
        for value in ("x", "y", "z"):
            leader.put(value, callback=lambda result, error, value=value: outcomes.__setitem__(value, error))
        leader.doTick(0)
        assert _terms(leader)[-3:] == [(3, 1), (4, 1), (5, 1)]
        leader._SyncObj__sendAppendEntries()
        follower_sent.clear()
        _relay(leader_sent, relayed, follower, L, F)
        assert _terms(follower)[-3:] == [(3, 1), (4, 1), (5, 1)]
        late_ack = [m for _, m in follower_sent if m["type"] == "next_node_idx" and m["success"]][-1]
        assert late_ack["next_node_idx"] == 6  # F holds L's term-1 entries through 5: true, in term 1
        # ... and that acknowledgement is slow to reach L.

        # Term 2: M (elected by M, A, B, whose logs end at 2) replaces L's uncommitted entries.
        _deliver(
            leader,
            M,
            {
                "type": "append_entries",
                "term": 2,
                "commit_index": 2,
                "prevLogIdx": 2,
                "prevLogTerm": 1,
                "entries": [(NO_OP, 3, 2)],
            },
        )
        assert _terms(leader)[-2:] == [(2, 1), (3, 2)]
        # Term 3: M is gone; L stands and A and B vote for it (their logs end at 3, term 2, as L's).
        _stand(leader, [A, B])
        assert leader.raftCurrentTerm == 3 and _terms(leader)[-1] == (4, 3)
        leader.put("w", callback=lambda result, error: outcomes.__setitem__("w", error))
        leader.doTick(0)
        assert _terms(leader)[-1] == (5, 3)
        # A acknowledges 3..5 (it holds them); F's term-1 acknowledgement arrives now.
        _deliver(leader, A, {"type": "next_node_idx", "next_node_idx": 6, "reset": False, "success": True})
        assert leader.raftCommitIndex == 2, "L and A alone are not a majority of five"
        _deliver(leader, F, late_ack)
        leader.doTick(0)

        # F holds L's term-1 entries at 3..5, not w; M and B never had w either.
        assert _terms(follower)[-3:] == [(3, 1), (4, 1), (5, 1)]
        # A majority without w (M, B and F) can elect M: F would vote for it.
        follower_sent.clear()
        _deliver(follower, M, {"type": "request_vote", "term": 4, "last_log_index": 3, "last_log_term": 2})
        assert any(m["type"] == "response_vote" for _, m in follower_sent)
        assert leader.raftCommitIndex < 5 and outcomes.get("w") != FAIL_REASON.SUCCESS, (
            f"w (index 5, term 3) committed on 2 of 5 voters (commit index {leader.raftCommitIndex}, "
            f"applied {leader.raftLastApplied}, its writer told {outcomes.get('w')!r} where 0 is success)"
        )
    finally:
        leader.destroy()
        follower.destroy()
