"""Change history and watches: the store's history (unit and property tests) and the SSE watch on a
real 3-node cluster across a leader failover."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpdb.client import Client
from mcpdb.errors import HistoryTrimmed, InvalidCursor
from mcpdb.store.changes import Cursor
from mcpdb.store.commands import from_entry
from mcpdb.store.state_machine import ContextStore
from tests.conftest import start_cluster

_OPS = st.lists(
    st.tuples(st.sampled_from(["put", "delete", "append", "batch"]), st.sampled_from(["a", "b", "c"])),
    min_size=1,
    max_size=40,
)


def _command(op: str, context_id: str) -> dict[str, Any]:
    if op == "put":
        return {"op": "put", "ns": "n", "id": context_id, "context": {"kind": "task", "data": {}}, "now": 1.0}
    if op == "delete":
        return {"op": "delete", "ns": "n", "id": context_id, "now": 1.0}
    if op == "append":
        return {
            "op": "append",
            "ns": "n",
            "id": "s-" + context_id,
            "now": 1.0,
            "turns": [{"role": "user", "content": "x"}],
        }
    return {
        "op": "batch",
        "ns": "n",
        "now": 1.0,
        "ops": [
            {"op": "put", "id": context_id, "context": {"kind": "memory", "facts": []}},
            {"op": "put", "id": context_id + "2", "context": {"kind": "task", "data": {}}},
        ],
    }


@settings(max_examples=40, deadline=None)
@given(ops=_OPS, history=st.integers(min_value=1, max_value=30))
def test_history_holds_exactly_the_newest_changes_in_commit_order(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str]], history: int
) -> None:
    store = ContextStore(str(tmp_path_factory.mktemp("store")), change_history=history)
    expected = []  # every change that applied, as (version, id, action)
    for index, (op, context_id) in enumerate(ops, start=1):
        result = store.apply(index, from_entry(_command(op, context_id)))
        assert result is not None
        if not result["ok"]:
            continue  # refused (deleting a missing context): no change recorded
        if op == "batch":
            expected += [(index, context_id, "put"), (index, context_id + "2", "put")]
        else:
            expected.append((index, context_id if op != "append" else "s-" + context_id, op))
    oldest = 0
    try:
        store.changes_after(0)
    except HistoryTrimmed as trimmed:
        oldest = trimmed.oldest
    kept = [change for change in expected if change[0] > oldest]
    assert len(kept) <= history  # whole versions are trimmed, so it may hold fewer
    got = [(c.version, c.id, c.action) for c in store.changes_after(oldest)]
    assert got == kept
    for version in {v for v, _, _ in kept}:  # resuming from any version gives exactly what follows it
        assert [(c.version, c.id, c.action) for c in store.changes_after(version)] == [
            change for change in kept if change[0] > version
        ]
    if oldest:
        with pytest.raises(HistoryTrimmed):
            store.changes_after(oldest - 1)
    store.close()


def test_cursor_parsing() -> None:
    assert Cursor.parse("12") == Cursor(12, None)
    assert Cursor.parse("12.3") == Cursor(12, 3)
    for bad in ("", "x", "1.", "-1", "1.2.3"):
        with pytest.raises(InvalidCursor):
            Cursor.parse(bad)


@pytest.mark.integration
def test_watch_on_a_follower_misses_nothing_across_a_leader_failover(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, extra_args=["--change-history", "150"])
    try:
        leader = cluster.leader()
        follower = next(n.node_id for n in cluster.layout.nodes if n.node_id != leader)
        seen: list[dict[str, Any]] = []

        def follow() -> None:
            with Client([cluster.spec(follower).url], deadline=20) as watcher:
                for change in watcher.watch("w", since="0"):
                    seen.append(change)
                    if len(seen) == 60:
                        return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        acknowledged: dict[str, int] = {}
        with Client(cluster.urls(), deadline=20) as writer:
            for i in range(60):
                if i == 30:
                    cluster.kill(leader)
                context_id = f"k{i:02d}"
                if i % 3 == 2:
                    acknowledged[context_id] = writer.append("w", context_id, "user", "hi")["version"]
                else:
                    acknowledged[context_id] = writer.put(
                        "w", context_id, {"kind": "task", "domain": "d", "goal": f"g{i}"}
                    )["version"]
                writer.put(
                    "other", context_id, {"kind": "task", "domain": "d", "goal": "g"}
                )  # another namespace: not seen
        thread.join(timeout=20)
        assert not thread.is_alive(), f"watcher saw {len(seen)} of 60 changes"
        assert [(c["id"], c["version"]) for c in seen] == sorted(acknowledged.items(), key=lambda item: item[1])
        assert all(c["namespace"] == "w" and c["event_id"] == str(c["version"]) for c in seen)
        assert [c["action"] for c in seen[:3]] == ["put", "put", "append"]

        # Resume on another node from the 10th event: exactly the rest, no gap or repeat.
        other = next(n.node_id for n in cluster.layout.nodes if n.node_id not in (leader, follower))
        resumed: list[dict[str, Any]] = []
        with Client([cluster.spec(other).url], deadline=10) as again:
            for change in again.watch("w", since=seen[9]["event_id"]):
                resumed.append(change)
                if len(resumed) == 50:
                    break
        assert resumed == seen[10:]

        with Client([cluster.spec(other).url], deadline=10) as again:
            sessions = []
            for change in again.watch("w", kind="session", since=str(seen[0]["version"])):
                sessions.append(change["id"])
                if len(sessions) == 20:
                    break
        assert sessions == [cid for cid in sorted(acknowledged, key=acknowledged.get) if int(cid[1:]) % 3 == 2]
        # A trimmed history: 410 naming the oldest version one can resume from.
        with Client(cluster.urls(), deadline=20) as writer:
            writer.batch(
                "other",
                [
                    {"op": "put", "id": f"b{i}", "context": {"kind": "task", "domain": "d", "goal": "g"}}
                    for i in range(40)
                ],
            )
        response = httpx.get(f"{cluster.spec(other).url}/v1/namespaces/w/watch", params={"since": "0"})
        assert response.status_code == 410 and response.json()["error"] == "compacted"
        assert response.json()["oldest_version"] > 0
        bad = httpx.get(f"{cluster.spec(other).url}/v1/namespaces/w/watch", params={"since": "x"})
        assert bad.status_code == 422
    finally:
        cluster.stop_all(graceful=False)


def test_expiry_and_batch_deletes_are_recorded_with_their_kind(tmp_path: Path) -> None:
    store = ContextStore(str(tmp_path / "s"))
    for index, entry in enumerate(
        [
            {"op": "put", "ns": "n", "id": "t", "context": {"kind": "memory", "facts": ["f"]}, "ttl": 1, "now": 100.0},
            {"op": "expire", "items": [["n", "t", 1]], "now": 102.0},
            {"op": "put", "ns": "n", "id": "u", "context": {"kind": "task"}, "now": 103.0},
            {"op": "batch", "ns": "n", "now": 104.0, "ops": [{"op": "delete", "id": "u"}]},
        ],
        start=1,
    ):
        store.apply(index, from_entry(entry))
    assert [(c.version, c.id, c.kind, c.action) for c in store.changes_after(0)] == [
        (1, "t", "memory", "put"),
        (2, "t", "memory", "expire"),
        (3, "u", "task", "put"),
        (4, "u", "task", "delete"),
    ]
    store.close()
