"""A voter that has not caught up with its leader since it started refuses reads and writes at once.

Measured at 1 M contexts: a wiped follower receiving its snapshot knew neither its leader nor its commit
index yet, so every request through it waited the whole request timeout (3 s) before failing; now the
node answers 503 at once and the client asks another. A ready follower is refused only when it is more
than ``CATCHING_UP_ENTRIES`` behind; replicas and leaders are not judged here.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from mcpdb.raft.pysyncobj_bridge import RaftNode


def _node(voter: bool, ready: bool, sample: dict[str, Any]) -> Any:
    return SimpleNamespace(
        _settings=SimpleNamespace(self_addr="127.0.0.1:1" if voter else None),
        _status_sample=sample,
        isReady=lambda: ready,
    )


FOLLOWER = {"state": 0, "leader": "127.0.0.1:2", "leader_commit_idx": 120, "last_applied": 100}


def test_a_voter_not_caught_up_since_it_started_is_refused_whatever_it_knows() -> None:
    assert RaftNode.follower_lag(_node(True, False, {})) == (False, 0)  # no sample yet: no leader, no index
    unknown = {**FOLLOWER, "leader": None, "leader_commit_idx": None}
    assert RaftNode.follower_lag(_node(True, False, unknown)) == (False, 0)
    assert RaftNode.follower_lag(_node(True, False, FOLLOWER)) == (False, 20)


def test_a_caught_up_follower_reports_its_lag_and_others_are_not_judged() -> None:
    assert RaftNode.follower_lag(_node(True, True, FOLLOWER)) == (True, 20)
    assert RaftNode.follower_lag(_node(True, True, {**FOLLOWER, "leader": None})) is None
    assert RaftNode.follower_lag(_node(True, True, {**FOLLOWER, "state": 2})) is None  # a leader
    assert RaftNode.follower_lag(_node(False, False, FOLLOWER)) is None  # a non-voting replica
