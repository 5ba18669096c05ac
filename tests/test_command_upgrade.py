"""The Raft log entry format survives an upgrade.

- A journal and snapshot written by release 0.1 (tests/fixtures/release-0.1, see
  make_release_fixture.py) replay on this code to exactly the state that release served, and the
  snapshot, which has no secondary indexes, gets them built from its contexts when installed.
- Every command round-trips through encode/decode; release 0.1's entries (no version) decode to the
  same commands as this code's; a version-1 entry read the way release 0.1 reads entries (by key,
  ignoring ``v``) is the same command, so a cluster mixing both releases applies one log identically.
- An entry newer than this code stops the node (exit status 78, a clear log line) instead of being
  skipped.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pysyncobj.pickle as pysyncobj_pickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj.journal import FileJournal

from mcpdb.errors import NewerFormat
from mcpdb.model import NAMESPACE_PATTERN
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster, NodeSpec, free_port
from mcpdb.raft.replication import EXIT_NEWER_LOG_FORMAT
from mcpdb.store.commands import (
    COMMAND_VERSION,
    WRITTEN_VERSION,
    Append,
    Batch,
    BatchDelete,
    BatchPut,
    Command,
    CreateToken,
    Delete,
    DeregisterNode,
    Expire,
    Put,
    RegisterNode,
    RevokeToken,
    SetVectors,
    TokenSpec,
    Unreadable,
    decode,
    encode,
    from_entry,
    namespace_in,
)
from mcpdb.store.state_machine import ContextStore
from tests.store_helpers import ctx_records, derived_index_state, index_state

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1"

# ---------------------------------------------------------------- strategies
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)  # JSON has no lone surrogates
INT = st.integers(-(2**63), 2**63 - 1)
OPTIONAL_INT = st.none() | st.integers(0, 2**53)
NOW = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | INT | NOW | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
OBJECT = st.dictionaries(TEXT, JSON, max_size=4)
CONTEXT = st.builds(lambda kind, fields: {**fields, "kind": kind}, TEXT, OBJECT)
BATCH_OP = st.builds(BatchPut, TEXT, CONTEXT, OPTIONAL_INT, OPTIONAL_INT) | st.builds(BatchDelete, TEXT, OPTIONAL_INT)
NAMESPACE = st.from_regex(NAMESPACE_PATTERN, fullmatch=True)
COMMANDS: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, TEXT, TEXT, CONTEXT, OPTIONAL_INT, OPTIONAL_INT, NOW),
    st.builds(Delete, TEXT, TEXT, OPTIONAL_INT),
    st.builds(Append, TEXT, TEXT, st.lists(OBJECT, max_size=3).map(tuple), OPTIONAL_INT, st.none() | TEXT, NOW),
    st.builds(Batch, TEXT, st.lists(BATCH_OP, max_size=4).map(tuple), NOW),
    st.builds(Expire, st.lists(st.tuples(TEXT, TEXT, st.integers(0, 2**63 - 1)), max_size=3).map(tuple), NOW),
    st.builds(RegisterNode, OBJECT.map(lambda node: {**node, "id": "n1"})),
    st.builds(DeregisterNode, TEXT),
    st.builds(
        CreateToken,
        st.builds(
            TokenSpec,
            TEXT,
            TEXT,
            TEXT,
            st.none() | NOW,
            st.dictionaries(TEXT, st.sampled_from(["read", "write", "admin"])),
        ),
        NOW,
    ),
    st.builds(RevokeToken, TEXT),
)


def _release_01_entry(command: Command, now: float) -> dict[str, Any]:
    """The entry release 0.1's ContextService proposed for ``command`` (its _write added "now" to all)."""
    entry: dict[str, Any]
    match command:
        case Put():
            entry = {
                "op": "put",
                "ns": command.ns,
                "id": command.id,
                "context": command.context,
                "ttl": command.ttl,
                "if_version": command.if_version,
                "now": command.now,
            }
        case Delete():
            entry = {"op": "delete", "ns": command.ns, "id": command.id, "if_version": command.if_version}
        case Append():
            entry = {
                "op": "append",
                "ns": command.ns,
                "id": command.id,
                "turns": list(command.turns),
                "if_version": command.if_version,
                "idempotency_key": command.idempotency_key,
                "now": command.now,
            }
        case Batch():
            ops = [
                {"op": "put", "id": op.id, "if_version": op.if_version, "context": op.context, "ttl": op.ttl}
                if isinstance(op, BatchPut)
                else {"op": "delete", "id": op.id, "if_version": op.if_version}
                for op in command.ops
            ]
            entry = {"op": "batch", "ns": command.ns, "ops": ops, "now": command.now}
        case Expire():
            entry = {"op": "expire", "items": [list(item) for item in command.items], "now": command.now}
        case RegisterNode():
            entry = {"op": "register_node", "node": command.node}
        case DeregisterNode():
            entry = {"op": "deregister_node", "id": command.id}
        case CreateToken():
            t = command.token
            entry = {
                "op": "create_token",
                "token": {
                    "id": t.id,
                    "hash": t.hash,
                    "description": t.description,
                    "rate_limit": t.rate_limit,
                    "scopes": t.scopes,
                },
                "now": command.now,
            }
        case RevokeToken():
            entry = {"op": "revoke_token", "id": command.id}
    return {"now": now, **entry}


# ---------------------------------------------------------------- format
@settings(max_examples=300, deadline=None)
@given(command=COMMANDS)
def test_every_command_round_trips_and_carries_the_version(command: Command) -> None:
    payload = encode(command)
    entry = orjson.loads(payload)
    assert (entry["v"], entry["op"]) == (WRITTEN_VERSION, _release_01_entry(command, 0.0)["op"])
    assert decode(payload) == command


@settings(max_examples=300, deadline=None)
@given(
    command=COMMANDS
    | st.builds(Batch, NAMESPACE, st.lists(BATCH_OP, max_size=2).map(tuple), NOW)
    | st.builds(Put, NAMESPACE, TEXT, CONTEXT, OPTIONAL_INT, OPTIONAL_INT, NOW)
    | st.builds(SetVectors, NAMESPACE, st.just(()), TEXT)
    | st.builds(RegisterNode, st.builds(lambda ns: {"v": 1, "ns": ns, "id": "n1"}, NAMESPACE))
)
def test_the_namespace_is_read_from_an_entrys_first_bytes_as_pysyncobj_queues_it(command: Command) -> None:
    """The leader's command lanes share their bulk slots by namespace (``mcpdb.raft.command_lanes``),
    read from the bytes pysyncobj queues: a command type byte and its pickle of the call. A name that
    is not a namespace's (every command but the four above draws any text) is never read as one."""
    payload = encode(command)
    queued = b"\x00" + pysyncobj_pickle.dumps((7, (payload,)))
    named = getattr(command, "ns", None)
    expected = named if named is not None and re.fullmatch(NAMESPACE_PATTERN, named) else None
    assert namespace_in(payload) == namespace_in(queued) == expected


@settings(max_examples=300, deadline=None)
@given(command=COMMANDS, now=NOW)
def test_release_01_entries_decode_to_the_same_commands(command: Command, now: float) -> None:
    assert decode(orjson.dumps(_release_01_entry(command, now))) == command


@settings(max_examples=300, deadline=None)
@given(command=COMMANDS)
def test_release_01_reads_a_version_1_entry_as_the_same_command(command: Command) -> None:
    """Release 0.1 reads an entry by key and never looks at ``v``: it sees the version-0 entry."""
    entry = orjson.loads(encode(command))
    del entry["v"]
    assert from_entry(entry) == command


def test_optional_keys_release_01_read_with_get_default_to_none() -> None:
    assert from_entry({"op": "put", "ns": "a", "id": "x", "context": {"kind": "task"}, "now": 1.0}) == Put(
        "a", "x", {"kind": "task"}, None, None, 1.0
    )
    assert from_entry(
        {"op": "batch", "ns": "a", "now": 1.0, "ops": [{"op": "put", "id": "x", "context": {}}]}
    ) == Batch("a", (BatchPut("x", {}, None, None),), 1.0)


def test_a_newer_entry_is_refused_by_name() -> None:
    with pytest.raises(
        NewerFormat,
        match=r"^log entry format v3 is newer than this node understands "
        r"\(max v2\): upgrade this node$",
    ):
        decode(b'{"v": 3, "op": "put"}')


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1]",
        b'{"op": "rename"}',
        b'{"op": "put", "ns": "a"}',
        b'{"v": "1", "op": "revoke_token", "id": "t"}',
        b'{"op": "expire", "items": [["a", "b"]], "now": 1}',
    ],
)
def test_a_malformed_entry_is_refused_but_counts_as_applied(tmp_path: Path, payload: bytes) -> None:
    command = decode(payload)
    assert isinstance(command, Unreadable)
    store = ContextStore(str(tmp_path))
    result = store.apply(7, command)
    assert result is not None and result["error"] == "invalid_command" and "entry 7" in result["message"]
    assert store.applied_index() == 7
    store.close()


# ---------------------------------------------------------------- a real node on release 0.1's files
def _node_on_fixture(tmp_path: Path) -> tuple[LocalCluster, dict[str, Any]]:
    """A one-node cluster of this code on release 0.1's journal and snapshot, with no LMDB store."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    host = expected["raft_addr"].split(":")[0]  # the snapshot names this member: same address
    layout = ClusterLayout(
        [NodeSpec("n1", f"{host}:{free_port(host)}", expected["raft_addr"])], extra_args=["--no-inference"]
    )
    cluster = LocalCluster(layout, tmp_path / "cluster", token=expected["admin_token"])
    (tmp_path / "cluster" / "n1").mkdir(parents=True)
    with tarfile.open(FIXTURE / "data.tar.gz") as tar:
        tar.extractall(tmp_path / "cluster" / "n1", filter="data")
    assert not (tmp_path / "cluster" / "n1" / "store").exists()
    return cluster, expected


def test_release_01_journal_and_snapshot_replay_to_the_state_it_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, expected = _node_on_fixture(tmp_path)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=60)
        with httpx.Client(
            base_url=cluster.spec("n1").url, timeout=10, headers={"Authorization": f"Bearer {expected['admin_token']}"}
        ) as client:
            for ns, recorded in expected["contexts"].items():
                listed = client.get(f"/v1/namespaces/{ns}/contexts", params={"limit": 1000}).json()
                assert [item["id"] for item in listed["items"]] == [item["id"] for item in recorded]
                for item in recorded:
                    assert client.get(f"/v1/namespaces/{ns}/contexts/{item['id']}").json() == item
                for kind in {item["kind"] for item in recorded}:  # through by_kind
                    of_kind = client.get(f"/v1/namespaces/{ns}/contexts", params={"kind": kind, "limit": 1000})
                    assert of_kind.json()["items"] == [  # listed without turns
                        {k: v for k, v in item.items() if k != "turns"} for item in recorded if item["kind"] == kind
                    ]
            assert client.get("/v1/tokens").json()["items"] == expected["tokens"]
            status = client.get("/v1/node").json()
            assert status["store_applied_index"] >= expected["commit_index"]
            # The idempotency keys replayed too: a retry of release 0.1's append appends nothing.
            retry = client.post(
                "/v1/namespaces/acme/sessions/chat-1/turns",
                headers={"Idempotency-Key": "req-1"},
                json={"turns": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
            )
            assert retry.json()["replayed"] is True
            assert client.get("/v1/namespaces/acme/contexts/chat-1").json()["turn_count"] == 5
    finally:
        cluster.stop_all(graceful=False)
    # Installing 0.1's snapshot built them (a new, empty store logs no build).
    node_log = (tmp_path / "cluster" / "n1" / "node.log").read_text()
    assert re.search(r"built the store's indexes \(format \d+\) over [1-9]\d* contexts", node_log)
    with caplog.at_level(logging.INFO, logger="mcpdb.store"):
        store = ContextStore(str(tmp_path / "cluster" / "n1" / "store"))
    try:
        assert "built the store's indexes" not in caplog.text  # the node kept them current as it applied
        assert index_state(store) == derived_index_state(ctx_records(store))
        assert store.count_by_kind() == Counter(
            item["kind"] for items in expected["contexts"].values() for item in items
        )
    finally:
        store.close()


def test_an_entry_newer_than_the_node_stops_it(tmp_path: Path) -> None:
    cluster, expected = _node_on_fixture(tmp_path)
    journal = FileJournal(str(tmp_path / "cluster" / "n1" / "raft" / "raft.journal"))
    command, index, term = journal[len(journal) - 1]
    func_id, _ = pysyncobj_pickle.loads(command[1:])  # the store's replicated apply, as pysyncobj names it
    newer = orjson.dumps({"v": COMMAND_VERSION + 1, "op": "revoke_token", "id": expected["tokens"][0]["id"]})
    journal.add(command[:1] + pysyncobj_pickle.dumps((func_id, (newer,))), index + 1, term)
    journal.flush()
    journal._destroy()
    cluster.start_all()
    try:
        process = cluster.processes["n1"]
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() == EXIT_NEWER_LOG_FORMAT
        log = (tmp_path / "cluster" / "n1" / "node.log").read_text()
        assert (
            f"entry {index + 1}: log entry format v{COMMAND_VERSION + 1} is newer than this node "
            f"understands (max v{COMMAND_VERSION}): upgrade this node"
        ) in log
    finally:
        cluster.stop_all(graceful=False)
