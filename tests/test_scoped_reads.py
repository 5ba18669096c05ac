"""A linearizable read of one namespace waits for the committed entries of that namespace (and of
none), not for another namespace's bulk batch being applied."""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
import typing
from pathlib import Path
from typing import Any

import pysyncobj.pickle
import pytest

from mcpdb.auth import Scope, new_token
from mcpdb.errors import NotApplied
from mcpdb.node.http.access import Authenticator, token_check_scope
from mcpdb.raft.pysyncobj_bridge import _REGULAR, SCOPED_SCAN_ENTRIES
from mcpdb.service import Confirmed, Consistency, ContextService
from mcpdb.store import commands
from mcpdb.store.commands import (
    NO_NAMESPACE,
    Append,
    Batch,
    BatchPut,
    CreateToken,
    Delete,
    DeregisterNode,
    Embedded,
    Expire,
    Put,
    RegisterNode,
    RevokeToken,
    SetVectors,
    TokenSpec,
    encode,
    read_scope_of,
)
from tests.raft_helpers import in_process_cluster, slow_preparations, wait_until

LONGEST = "n" * 63  # the longest namespace NAMESPACE_PATTERN allows
SCOPED = [
    Put("tenant-a", "c", {"kind": "memory", "facts": ["x"]}, None, None, 1.0),
    Delete("tenant-a", "c", None),
    Append("tenant-a", "s", ({"role": "user", "content": "hi"},), None, None, 1.0),
    Batch("tenant-a", (BatchPut("c", {"kind": "memory", "facts": ["x"]}, None, None),), 1.0),
]
GLOBAL = [
    SetVectors("tenant-a", (Embedded("c", 1, "AAAA"),), "model"),  # it also sets the model every search ranks with
    Expire((("tenant-a", "c", 1),), 1.0),
    CreateToken(TokenSpec("t", "h" * 64, "", None, {"tenant-a": "read"}), 1.0),
    RevokeToken("t"),
    RegisterNode({"id": "n9"}),
    DeregisterNode("n9"),
]


def _journaled(payload: bytes) -> bytes:
    """An entry as pysyncobj journals a ``@replicated`` call with one argument: its type byte, then its
    own pickle (protocol 2) of ``(function id, args)``."""
    return _REGULAR + pysyncobj.pickle.dumps((0, (payload,)))


@pytest.mark.parametrize("command", SCOPED, ids=lambda command: type(command).__name__)
def test_a_context_write_is_scoped_to_its_namespace_bare_and_as_pysyncobj_journals_it(command: Any) -> None:
    payload = encode(command)
    assert read_scope_of(payload) == "tenant-a"
    assert read_scope_of(_journaled(payload)[1:]) == "tenant-a"
    longest = encode(dataclasses.replace(command, ns=LONGEST))
    assert read_scope_of(_journaled(longest)[1 : 1 + commands.NAMESPACE_WITHIN]) == LONGEST


def test_a_large_batch_with_any_text_is_scoped_from_its_first_bytes() -> None:
    puts = tuple(
        BatchPut(f"c{j}", {"kind": "memory", "facts": ['{"v":1,"ns":"other" ü 😀' * 50]}, None, None)
        for j in range(500)
    )
    head = _journaled(encode(Batch("tenant-a", puts, 1.0)))[: 1 + commands.NAMESPACE_WITHIN]
    assert read_scope_of(head[1:]) == "tenant-a"


def test_every_command_type_is_either_scoped_or_concerns_every_read() -> None:
    """A new command type must be placed in one list or the other: a scoped one is one a read of
    another namespace cannot see (and it must be written at WRITTEN_VERSION, with ``ns`` first)."""
    listed = {type(command) for command in SCOPED + GLOBAL}
    assert listed == set(typing.get_args(commands.Command))
    assert commands.WRITTEN_VERSION != commands.SET_VECTORS_VERSION  # what keeps vectors out of the scoped


@pytest.mark.parametrize("command", GLOBAL, ids=lambda command: type(command).__name__)
def test_every_other_entry_concerns_every_read(command: Any) -> None:
    assert read_scope_of(encode(command)) is None
    assert read_scope_of(b"not a command") is None


def _batch(namespace: str, name: str) -> Batch:
    puts = tuple(BatchPut(f"{name}-{j}", {"kind": "memory", "facts": ["x" * 1000]}, None, None) for j in range(100))
    return Batch(namespace, puts, 1.0)


APPLY_S = 3.0  # the bulk batch's apply, in steps (a read not waiting for it takes milliseconds)


def _applying_a_batch(replication: Any) -> bool:
    """Whether ``replication`` has an entry committed and not yet applied (the batch, in its steps)."""
    status = replication.status()
    return bool(status["commit_index"] > status["applied_index"])


def test_a_read_of_another_namespace_does_not_wait_for_a_bulk_batch_being_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the leader and the followers apply a batch of namespace ``bulk`` (``APPLY_S``, in steps), a
    linearizable read of namespace ``probe``, on the leader and on a follower, is confirmed at the
    batch's index or later without waiting for it, and sees the write to ``probe`` made before. A read
    of ``bulk``, and a read of no namespace, wait until the batch is applied and then see it."""
    with in_process_cluster(tmp_path) as voters:
        (leader, leader_store), (follower, follower_store), _ = voters
        put = Put("probe", "k", {"kind": "memory", "facts": ["before the batch"]}, None, None, 1.0)
        asyncio.run(leader.propose(put, 10.0))
        slow_preparations(voters, monkeypatch, APPLY_S, lambda command: isinstance(command, Batch))
        outcome: list[Any] = []
        loader = threading.Thread(target=lambda: outcome.append(asyncio.run(leader.propose(_batch("bulk", "b"), 30.0))))
        loader.start()
        try:
            wait_until(lambda: _applying_a_batch(leader), "the batch was not committed ahead of its apply", timeout=5)
            batch_index = leader.status()["commit_index"]
            for replication, store in ((leader, leader_store), (follower, follower_store)):
                began = time.monotonic()
                index = asyncio.run(replication.read_index(5.0, "probe"))
                took = time.monotonic() - began
                assert index >= batch_index and took < APPLY_S / 2, (index, batch_index, took)
                assert store.get("probe", "k") is not None and store.get("bulk", "b-0") is None
            began = time.monotonic()
            asyncio.run(follower.read_index(10.0, "bulk"))
            assert follower_store.get("bulk", "b-99") is not None
            waited_for_bulk = time.monotonic() - began
            assert waited_for_bulk > APPLY_S / 4, waited_for_bulk
        finally:
            loader.join(30)
        assert outcome and outcome[0]["version"] >= batch_index, outcome


def test_a_read_of_no_namespace_waits_for_every_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with in_process_cluster(tmp_path) as voters:
        (leader, leader_store), *_ = voters
        slow_preparations(voters, monkeypatch, APPLY_S, lambda command: isinstance(command, Batch))
        loader = threading.Thread(target=lambda: asyncio.run(leader.propose(_batch("bulk", "b"), 30.0)))
        loader.start()
        try:
            wait_until(lambda: _applying_a_batch(leader), "the batch was not committed ahead of its apply", timeout=5)
            asyncio.run(leader.read_index(10.0))
            assert leader_store.get("bulk", "b-99") is not None
        finally:
            loader.join(30)


def _token(token_id: str) -> CreateToken:
    return CreateToken(TokenSpec(token_id, "h" * 64, "", None, {"tenant-a": "read"}), 1.0)


def test_a_token_check_waits_for_entries_of_no_namespace_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scoped token is checked after a read of no namespace's state (``NO_NAMESPACE``): while a batch
    of namespace ``bulk`` is applied, it is confirmed on a follower without waiting for the batch and
    sees a token created before; a token created after the batch is applied after it, and a read
    confirmed after that token committed waits for both and sees it."""
    with in_process_cluster(tmp_path) as voters:
        (leader, _), (follower, follower_store), _ = voters
        asyncio.run(leader.propose(_token("before"), 10.0))
        slow_preparations(voters, monkeypatch, APPLY_S, lambda command: isinstance(command, Batch))
        proposals = [
            threading.Thread(target=lambda: asyncio.run(leader.propose(_batch("bulk", "b"), 30.0))),
            threading.Thread(target=lambda: asyncio.run(leader.propose(_token("after"), 30.0))),
        ]
        proposals[0].start()
        try:
            wait_until(lambda: _applying_a_batch(leader), "the batch was not committed ahead of its apply", timeout=5)
            batch_index = leader.status()["commit_index"]
            began = time.monotonic()
            asyncio.run(follower.read_index(5.0, NO_NAMESPACE))
            took = time.monotonic() - began
            assert took < APPLY_S / 2 and follower_store.token("before") is not None, took
            assert follower_store.get("bulk", "b-0") is None
            proposals[1].start()
            wait_until(lambda: leader.status()["commit_index"] > batch_index, "the token did not commit", timeout=5)
            asyncio.run(follower.read_index(10.0, NO_NAMESPACE))
            assert follower_store.token("after") is not None and follower_store.get("bulk", "b-99") is not None
        finally:
            for proposal in proposals:
                proposal.join(30)


def test_a_token_check_waits_for_a_namespace_only_when_the_token_may_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of ``bulk`` with a token of ``bulk`` is checked at ``bulk``'s scope and served at that
    read index (it waits for the batch); with a token of ``tenant-a`` only, its check waits for no
    namespace's entries and answers at once: how long a refusal takes does not tell that ``bulk`` is
    being written."""
    with in_process_cluster(tmp_path) as voters:
        (leader, _), (follower, follower_store), _ = voters
        minted = {namespace: new_token() for namespace in ("bulk", "tenant-a")}
        for namespace, (_, token_id, digest) in minted.items():
            spec = TokenSpec(token_id, digest, "", None, {namespace: "read"})
            asyncio.run(leader.propose(CreateToken(spec, 1.0), 10.0))
        authenticator = Authenticator("bootstrap", follower_store, lambda scope: follower.read_index(10.0, scope))
        slow_preparations(voters, monkeypatch, APPLY_S, lambda command: isinstance(command, Batch))
        loader = threading.Thread(target=lambda: asyncio.run(leader.propose(_batch("bulk", "b"), 30.0)))
        loader.start()
        try:
            wait_until(lambda: _applying_a_batch(leader), "the batch was not committed ahead of its apply", timeout=5)
            outsider = f"Bearer {minted['tenant-a'][0]}".encode()
            began = time.monotonic()
            principal, confirmed = asyncio.run(authenticator.principal(outsider, "bulk"))
            took = time.monotonic() - began
            assert principal is not None and not principal.allows("bulk", Scope.read)
            assert confirmed is not None and confirmed.namespace == NO_NAMESPACE and took < APPLY_S / 2, took
            assert follower_store.get("bulk", "b-0") is None
            reader = f"Bearer {minted['bulk'][0]}".encode()
            principal, confirmed = asyncio.run(authenticator.principal(reader, "bulk"))
            assert principal is not None and confirmed is not None and confirmed.namespace == "bulk"
            assert follower_store.get("bulk", "b-99") is not None  # served at the check's read index
        finally:
            loader.join(30)


@pytest.mark.parametrize(
    ("method", "path", "query", "scope"),
    [
        ("GET", "/v1/namespaces/a/contexts/x", b"", "a"),
        ("GET", "/v1/namespaces/a/contexts/x", b"consistency=linearizable", "a"),
        ("GET", "/v1/namespaces/a/contexts", b"kind=task&limit=5", "a"),
        ("GET", "/v1/namespaces/a/search", b"q=tea", "a"),
        ("GET", "/v1/namespaces/a/contexts/x", b"consistency=stale", NO_NAMESPACE),
        ("GET", "/v1/namespaces/a/search", b"q=tea&consistency=stale", NO_NAMESPACE),
        ("GET", "/v1/namespaces/a/watch", b"since=1", NO_NAMESPACE),
        ("HEAD", "/v1/namespaces/a/contexts/x", b"", NO_NAMESPACE),
        ("PUT", "/v1/namespaces/a/contexts/x", b"", NO_NAMESPACE),
        ("POST", "/v1/namespaces/a/batch", b"", NO_NAMESPACE),
        ("GET", "/v1/namespaces/Not-A-Namespace/contexts/x", b"", NO_NAMESPACE),
        ("GET", "/v1/tokens", b"", NO_NAMESPACE),
        ("POST", "/mcp", b"", NO_NAMESPACE),
    ],
)
def test_a_token_check_waits_for_the_namespace_only_of_a_read_served_at_it(
    method: str, path: str, query: bytes, scope: str
) -> None:
    assert token_check_scope(method, path, query) == scope


def test_a_read_reuses_the_token_checks_read_index_only_for_the_namespace_it_waited_for() -> None:
    waited: list[str | None] = []

    class Barrier:
        async def wait(self, namespace: str | None = None) -> int:
            waited.append(namespace)
            return 99

    service = ContextService(None, Barrier(), 1.0)  # type: ignore[arg-type]  # read_index needs the barrier only
    linearizable = Consistency.linearizable
    assert asyncio.run(service.read_index(linearizable, "a", Confirmed(7, "a"))) == 7 and waited == []
    assert asyncio.run(service.read_index(linearizable, "a", Confirmed(7, NO_NAMESPACE))) == 99  # a lagging token
    assert asyncio.run(service.read_index(linearizable, "b", Confirmed(7, "a"))) == 99
    assert asyncio.run(service.read_index(Consistency.stale, "a", None)) is None
    assert waited == ["a", "b"]


def _in_raft_thread(raft: Any, action: Any) -> Any:
    done: queue.Queue[Any] = queue.Queue()
    raft.call_in_raft_thread(lambda: done.put(action()))
    return done.get(timeout=10)


def test_committed_entries_scopes_are_read_once_and_forgotten_below_the_applied_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RaftNode.last_entry_for`` reads each committed entry's head once, however many reads look at it,
    and keeps the scopes of no more entries than a read may look through (twice ``SCOPED_SCAN_ENTRIES``)."""
    with in_process_cluster(tmp_path) as voters:

        async def writes(first: int) -> None:
            puts = [
                Put("a", f"k{n}", {"kind": "memory", "facts": ["x"]}, None, None, 1.0) for n in range(first, first + 50)
            ]
            await asyncio.gather(*(leader.propose(put, 30.0) for put in puts))

        for first in range(0, 700, 50):  # in groups, each again if the leader changed under the load
            while True:
                wait_until(lambda: any(voter.is_leader() for voter, _ in voters), "no leader")
                leader = next(voter for voter, _ in voters if voter.is_leader())
                try:
                    asyncio.run(writes(first))
                    break
                except NotApplied:
                    continue
        raft = leader._raft
        reads: list[int] = []
        read_scope_at = raft._read_scope_at
        monkeypatch.setattr(raft, "_read_scope_at", lambda index: reads.append(index) or read_scope_at(index))
        last = raft.raftCommitIndex
        assert _in_raft_thread(raft, lambda: raft.last_entry_for("a", last - 10, last)) == last
        assert _in_raft_thread(raft, lambda: raft.last_entry_for("b", last - 10, last)) == last - 10
        assert sorted(reads) == list(range(last - 9, last + 1))  # each head once: the second read used them
        for after in range(last - 700, last - 200, 50):
            _in_raft_thread(raft, lambda after=after: raft.last_entry_for("b", after, after + 200))
        assert len(raft._read_scopes) <= 2 * SCOPED_SCAN_ENTRIES + 1  # of the 660 looked at
