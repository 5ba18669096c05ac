"""Raft replication of the context store through pysyncobj, bridged into asyncio.

Every mutation is one log entry: a command (``mcpdb.store.commands``, versioned
JSON) applied by ``ContextStore`` on every replica in log order. Proposals are pipelined: a proposal hands its
entry to pysyncobj's queue with a callback and awaits an asyncio future that
the Raft thread settles, so thousands of writes can be in flight at once.

Failures are sorted into two kinds, because a client must know which:
``NotApplied`` (the entry never entered the log: safe to retry) and
``Indeterminate`` (it may still commit: a retry must be idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lmdb
import orjson
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.version import VERSION as PYSYNCOBJ_INSTALLED

from mcpdb.raft.read_index import Done, ReadIndex
from mcpdb.raft.transport import McpdbTransport, transport_class
from mcpdb.store.commands import Command, NewerFormat, decode, encode
from mcpdb.store.state_machine import ContextStore

_log = logging.getLogger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"
# Exit status of a node that met a log entry newer than its code (EX_CONFIG):
# it must be upgraded, and restarting it unchanged stops at the same entry.
EXIT_NEWER_LOG_FORMAT = 78
STATUS_PERIOD_S = 0.1

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
_NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL: "the Raft queue is full",
    FAIL_REASON.MISSING_LEADER: "no leader is elected (no quorum, or an election is under way)",
    FAIL_REASON.DISCARDED: "a new leader replaced the entry before it committed",
    FAIL_REASON.NOT_LEADER: "the node it was sent to is no longer the leader",
    FAIL_REASON.REQUEST_DENIED: "the leader refused the request",
}


def check_pysyncobj_version() -> None:
    """Refuse to run on a pysyncobj whose internals mcpdb was not checked against."""
    if PYSYNCOBJ_INSTALLED != PYSYNCOBJ_VERSION:
        raise RuntimeError(
            f"mcpdb requires pysyncobj=={PYSYNCOBJ_VERSION} (it relies on its apply order, "
            f"journal and transport internals); found {PYSYNCOBJ_INSTALLED}"
        )


class Unserializable(ValueError):
    """A command holding a value JSON cannot carry (an integer beyond 64 bits, a lone surrogate)."""


class Unavailable(Exception):
    """The cluster could not take the request now; ``retry_after`` is a hint in seconds."""

    retry_after = 1


class NotApplied(Unavailable):
    """The entry is certainly not in the log: retrying cannot duplicate it."""


class Indeterminate(Unavailable):
    """The entry may or may not commit later: only an idempotent retry is safe."""


@dataclass
class RaftSettings:
    """How one node takes part in Raft. ``self_addr=None`` makes a non-voting replica.

    The fields without a default are the node's flags: NodeConfig holds their defaults, once.
    """

    self_addr: str | None
    peers: list[str]
    data_dir: str
    password: str | None
    durable: bool
    compaction_min_entries: int
    max_entry_bytes: int
    # Unbatched AppendEntries (one message per new entry, sent at once) is the
    # fast path: ~1 ms commits. It is only safe with the transport's log guard
    # (see raft_safety); batching trades latency for fewer messages.
    batch_append_entries: bool = False
    heartbeat_period: float = 0.05
    tick_period: float = 0.05
    election_timeout: tuple[float, float] = (0.5, 1.0)
    compaction_min_seconds: int = 300
    on_state_changed: Callable[[int, int], None] | None = field(default=None, repr=False)

    def syncobj_conf(self, store: ContextStore) -> SyncObjConf:
        os.makedirs(self.data_dir, exist_ok=True)
        return SyncObjConf(
            password=self.password,
            journalFile=os.path.join(self.data_dir, "raft.journal"),
            fullDumpFile=os.path.join(self.data_dir, "raft.snapshot"),
            serializer=store.write_snapshot,
            deserializer=store.install_snapshot,
            appendEntriesUseBatch=self.batch_append_entries,
            appendEntriesPeriod=self.heartbeat_period,
            # Above this size pysyncobj splits an entry into a chunked
            # "transmission", a path the log guard does not reconcile: keep
            # every entry the API accepts below it.
            appendEntriesBatchSizeBytes=max(4 << 20, 2 * self.max_entry_bytes),
            autoTickPeriod=self.tick_period,
            raftMinTimeout=self.election_timeout[0],
            raftMaxTimeout=self.election_timeout[1],
            # A leader cut off from the majority steps down after this long
            # (pysyncobj's default is 30 s, during which writes only time out).
            leaderFallbackTimeout=self.election_timeout[1],
            connectionTimeout=max(3.5, self.election_timeout[1]),
            connectionRetryTime=0.5,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            logCompactionMinEntries=self.compaction_min_entries,
            logCompactionMinTime=self.compaction_min_seconds,
            sendBufferSize=1 << 20,
            recvBufferSize=1 << 20,
            onStateChanged=self.on_state_changed,
        )


class RaftNode(SyncObj):
    """The pysyncobj object of one node: one replicated method, the store's ``apply``."""

    def __init__(self, settings: RaftSettings, store: ContextStore) -> None:
        check_pysyncobj_version()
        self._store = store
        self._deferred: collections.deque[Callable[[], None]] = collections.deque()
        self._commit_listeners: list[Callable[[], None]] = []
        super().__init__(settings.self_addr, settings.peers, settings.syncobj_conf(store),
                         transportClass=transport_class(settings.durable))
        self.read_index = ReadIndex(self, self.transport.send, self.wake)
        self.transport.read_index = self.read_index
        self._install_wakeups()
        # pysyncobj's getStatus() iterates dicts its thread mutates: other
        # threads read this snapshot, refreshed by the Raft thread instead.
        self.status_snapshot: dict[str, Any] = {}
        self._status_taken = 0.0
        self.leader_changes = 0  # times a leader other than the last one known was seen (the first counts)
        self._last_leader: Any = None
        self.addOnTickCallback(self._commit_and_notify)

    @replicated
    def _apply_entry(self, payload: bytes) -> dict[str, Any] | None:
        # pysyncobj applies entry raftLastApplied+1 and increments the counter
        # after the call returns (SyncObj.__applyLogEntries in 0.3.17).
        index = self.raftLastApplied + 1
        try:
            return self._store.apply(index, decode(payload), commit=False)
        except NewerFormat as error:
            # Skipping the entry would diverge from the peers that apply it, so
            # stop; the journal keeps it for the upgraded node to apply.
            _log.critical("entry %d: %s; stopping this node", index, error)
            os._exit(EXIT_NEWER_LOG_FORMAT)
        except lmdb.Error:
            _log.critical("LMDB failed applying entry %d; stopping this node", index, exc_info=True)
            os._exit(70)

    def _install_wakeups(self) -> None:
        """Wake pysyncobj's thread only when it is blocked in poll, and never let it block with work queued.

        pysyncobj writes to a pipe for every proposal to wake its poll; mcpdb
        adds read-index requests and deferred actions. A write and the GIL
        hand-off it causes cost about as much as the rest of a read. The flag
        is set before the thread looks for work, so a producer that queues
        work after that look sees the flag and writes to the pipe: no wake-up
        is lost.
        """
        self._polling = False
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        self._notify_pipe: Callable[[], None] = notifier.notify if notifier is not None else (lambda: None)
        if notifier is not None:
            notifier.notify = self.wake
        commands = self._SyncObj__commandsQueue._FastQueue__queue
        poll = self._poller.poll

        def poll_unless_work(timeout: float) -> None:
            self._polling = True
            if self._deferred or commands or self.read_index.has_incoming():
                timeout = 0
            try:
                poll(timeout)
            finally:
                self._polling = False

        self._poller.poll = poll_unless_work

    def wake(self) -> None:
        """Called from any thread after queueing work for the Raft thread."""
        if self._polling:
            self._notify_pipe()

    def defer(self, notify: Callable[[], None]) -> None:
        """Run ``notify`` in the Raft thread, after the entries applied so far are committed to LMDB."""
        self._deferred.append(notify)

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` in the Raft thread each time applied entries were committed to LMDB."""
        self._commit_listeners.append(listener)

    def call_in_raft_thread(self, action: Callable[[], None]) -> None:
        """pysyncobj is not thread-safe beyond its command queue: run ``action`` on its thread."""
        self._deferred.append(action)
        self.wake()

    def _commit_and_notify(self) -> None:
        # Group commit: pysyncobj applied this tick's entries into one open
        # LMDB transaction; commit it, then release the waiters (writes and
        # reads whose read index is now applied), so nobody is told "done"
        # before a read on this node can see the result.
        if self._store.commit():
            for listener in self._commit_listeners:
                listener()
        self.read_index.on_tick()
        while self._deferred:
            self._deferred.popleft()()
        now = time.monotonic()
        if now - self._status_taken >= STATUS_PERIOD_S:
            self._status_taken = now
            self.status_snapshot = {**self.getStatus(), "log_first_index": self._SyncObj__raftLog[0][1]}
            leader = self.status_snapshot["leader"]
            if leader is not None and leader != self._last_leader:
                self._last_leader = leader
                self.leader_changes += 1

    @property
    def transport(self) -> McpdbTransport:
        return self._SyncObj__transport  # type: ignore[attr-defined]


def _settle(future: asyncio.Future[Any], result: Any, error: int) -> None:
    if future.done():
        return
    if error == FAIL_REASON.SUCCESS and result is not None:
        future.set_result(result)
    elif error in _NOT_APPLIED:
        future.set_exception(NotApplied(_NOT_APPLIED[error]))
    else:
        future.set_exception(Indeterminate(
            "the leader changed while the entry was in flight; it may or may not have been applied"))


def _settle_read(future: asyncio.Future[int], index: int | None, error: str | None) -> None:
    if future.done():
        return
    if error is None and index is not None:
        future.set_result(index)
    else:
        future.set_exception(NotApplied(f"read not confirmed: {error}"))


class Replication:
    """asyncio-facing handle on a node's Raft participation."""

    def __init__(self, settings: RaftSettings, store: ContextStore) -> None:
        self.settings = settings
        self.store = store
        self.raft = RaftNode(settings, store)

    async def propose(self, command: Command, timeout: float) -> dict[str, Any]:
        """Replicate one command and return its result once this node applied it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, error: int) -> None:
            self.raft.defer(lambda: loop.call_soon_threadsafe(_settle, future, result, error))

        try:
            payload = encode(command)
        except orjson.JSONEncodeError as error:  # refused before anything enters the log
            raise Unserializable(f"the request holds a value that cannot be stored: {error}") from None
        self.raft._apply_entry(payload, callback=done)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Indeterminate(
                f"not committed within {timeout:g} s (no quorum?); it may or may not be applied later"
            ) from None

    async def read_index(self, timeout: float) -> int:
        """A confirmed read index (Raft ReadIndex), once this node has applied it."""
        return await self._index_when_applied(self.raft.read_index.request, timeout,
                                              f"could not confirm the leader within {timeout:g} s (no quorum?)")

    async def wait_applied(self, index: int, timeout: float) -> None:
        """Return once this node's store reflects Raft index ``index`` (including entries, like the
        leader's election no-op, that never reach the store)."""
        await self._index_when_applied(
            lambda done: self.raft.call_in_raft_thread(lambda: self.raft.read_index.wait_applied(index, done)),
            timeout, f"this node has not applied index {index} within {timeout:g} s")

    async def _index_when_applied(self, register: Callable[[Done], None],
                                  timeout: float, timeout_message: str) -> int:
        """Bridge a ReadIndex callback (run in the Raft thread once this node applied an index) to asyncio."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        def done(index: int | None, error: str | None) -> None:
            loop.call_soon_threadsafe(_settle_read, future, index, error)

        register(done)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise NotApplied(timeout_message) from None

    async def change_membership(self, action: str, raft_addr: str, timeout: float) -> None:
        """Add or remove a voter; one change at a time, through the log."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, error: int) -> None:
            loop.call_soon_threadsafe(_settle, future, True if error == FAIL_REASON.SUCCESS else None,
                                      error)

        change = self.raft.addNodeToCluster if action == "add" else self.raft.removeNodeFromCluster
        change(raft_addr, callback=done)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Indeterminate(f"membership change not committed within {timeout:g} s") from None

    def transfer_leadership(self) -> None:
        """Hand leadership to a caught-up voter (used on graceful shutdown of the leader)."""
        self.raft.call_in_raft_thread(self.raft.transferLeadership)

    def is_leader(self) -> bool:
        return self.raft._isLeader()

    def leader_addr(self) -> str | None:
        leader = self.raft._getLeader()
        return leader.id if leader is not None else None

    def voters(self) -> list[str]:
        """Raft addresses of the voting members as this node currently knows them."""
        members = {node.id for node in self.raft.otherNodes}
        if self.raft.selfNode is not None:
            members.add(self.raft.selfNode.id)
        return sorted(members)

    def status(self) -> dict[str, Any]:
        """This node's view of Raft: role, term, indexes, log size, peers' match index."""
        raw = self.raft.status_snapshot
        if not raw:
            return {"role": "starting", "leader": None, "term": 0, "commit_index": 0, "applied_index": 0,
                    "leader_commit_index": None, "log_entries": 0, "log_first_index": 0,
                    "has_quorum": False, "ready": False, "match_index": {}}
        role = "replica" if self.settings.self_addr is None else _ROLES.get(raw["state"], "unknown")
        return {
            "role": role,
            "leader": raw["leader"].id if raw["leader"] is not None else None,
            "term": raw["raft_term"],
            "commit_index": raw["commit_idx"],
            "applied_index": raw["last_applied"],
            "leader_commit_index": raw["leader_commit_idx"],
            "log_entries": raw["log_len"],
            "log_first_index": raw["log_first_index"],
            "has_quorum": raw["has_quorum"],
            "ready": self.raft.isReady(),
            "match_index": {key[len("match_idx_server_"):]: value for key, value in raw.items()
                            if key.startswith("match_idx_server_")},
            "read_index_rounds": self.raft.read_index.rounds,
            "journal_syncs": self.raft.transport.journal.syncs if self.raft.transport.journal else None,
            "reconciled_append_entries": self.raft.transport.reconciled_messages,
        }

    def close(self) -> None:
        self.raft.destroy_synchronous()
