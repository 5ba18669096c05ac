"""Raft replication of the context store, bridged into asyncio (pysyncobj behind ``pysyncobj_bridge``).

Every mutation is one log entry: a command (``mcpdb.store.commands``, versioned
JSON) applied by ``ContextStore`` on every replica in log order. Proposals are pipelined: a proposal hands its
entry to the Raft queue with a callback and awaits an asyncio future that
the Raft thread settles, so thousands of writes can be in flight at once.

Failures are sorted into two kinds, because a client must know which:
``NotApplied`` (the entry never entered the log: safe to retry) and
``Indeterminate`` (it may still commit: a retry must be idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

import orjson

from mcpdb.errors import (
    EntryTooLarge,
    Indeterminate,
    InsufficientStorage,
    NewerFormat,
    NotApplied,
    Unavailable,
    Unserializable,
)
from mcpdb.raft.loop_handoff import LoopHandoff
from mcpdb.raft.pysyncobj_bridge import RaftNode, Refusal
from mcpdb.raft.read_index import Done
from mcpdb.raft.settings import RaftSettings
from mcpdb.store.commands import Command, Unreadable, decode, encode
from mcpdb.store.state_machine import ContextStore

_log = logging.getLogger(__name__)
ENTRY_FRAMING_BYTES = 1024  # more than pysyncobj adds around a command: its type byte and the call's pickle
CATCHING_UP_ENTRIES = 1000  # committed entries a follower may still have to apply and serve
START_GRACE_S = 1.0  # a forced snapshot starts within a tick or two, unless nothing is new

# Exit status of a node that met a log entry newer than its code (EX_CONFIG):
# it must be upgraded, and restarting it unchanged stops at the same entry.
EXIT_NEWER_LOG_FORMAT = 78


def _settle(future: asyncio.Future[Any], result: Any, refusal: Refusal | None) -> None:
    if future.done():
        return
    if refusal is None and result is not None:
        future.set_result(result)
    elif refusal is not None and refusal.reason is not None:
        future.set_exception(NotApplied(refusal.reason))
    else:
        future.set_exception(
            Indeterminate("the leader changed while the entry was in flight; it may or may not have been applied")
        )


def _settle_read(future: asyncio.Future[int], index: int | None, error: str | None) -> None:
    if future.done():
        return
    if error is None and index is not None:
        future.set_result(index)
    else:
        future.set_exception(NotApplied(f"read not confirmed: {error}"))


def _decoded(index: int, payload: bytes) -> Command | Unreadable:
    """Entry ``index``'s command; a node whose code is older than the entry stops."""
    try:
        return decode(payload)
    except NewerFormat as error:
        # Skipping the entry would diverge from the peers that apply it, so
        # stop; the journal keeps it for the upgraded node to apply.
        _log.critical("entry %d: %s; stopping this node", index, error)
        os._exit(EXIT_NEWER_LOG_FORMAT)


class Replication:
    """asyncio-facing handle on a node's Raft participation."""

    def __init__(self, settings: RaftSettings, store: ContextStore) -> None:
        self.settings = settings
        self.store = store
        self._raft = RaftNode(settings, store, self._apply, self._prepare)
        # Futures are settled from the Raft thread through one handoff per event loop (a node has one;
        # tests may run several loops in turn, each entry going with its loop).
        self._handoffs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopHandoff] = weakref.WeakKeyDictionary()

    def _handoff(self) -> LoopHandoff:
        """The running loop's handoff (event-loop thread)."""
        loop = asyncio.get_running_loop()
        handoff = self._handoffs.get(loop)
        if handoff is None:
            handoff = self._handoffs[loop] = LoopHandoff(loop)
        return handoff

    def _apply(self, index: int, payload: bytes) -> dict[str, Any] | None:
        """Apply one committed entry (Raft thread); a node that cannot apply it exactly as its peers do stops
        (an LMDB failure stops it in ``RaftNode._onTick``, like a failed group commit)."""
        return self.store.apply(index, _decoded(index, payload), commit=False)

    def _prepare(self, index: int, payload: Callable[[], bytes], seconds: float) -> bool:
        """One step of a bulk entry's apply (Raft thread, ``ContextStore.prepare``)."""
        return self.store.prepare(index, lambda: _decoded(index, payload()), seconds)

    async def propose(self, command: Command, timeout: float) -> dict[str, Any]:
        """Replicate one command and return its result once this node applied it."""
        handoff = self._handoff()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(result: Any, refusal: Refusal | None) -> None:
            self._raft.defer(lambda: handoff.call(_settle, future, result, refusal))

        self._refuse_while_catching_up()
        disk = self._raft.disk.state
        if disk.alarm:
            raise InsufficientStorage(
                f"this node cannot reserve disk space and takes no writes until it can: {'; '.join(disk.reasons)}"
            )
        try:
            payload = encode(command)
        except orjson.JSONEncodeError as error:  # refused before anything enters the log
            raise Unserializable(f"the request holds a value that cannot be stored: {error}") from None
        if len(payload) + ENTRY_FRAMING_BYTES >= self.settings.entry_limit:
            raise EntryTooLarge(
                f"stored with its fields' defaults this request is {len(payload):,} bytes, more than the "
                f"{self.settings.entry_limit - ENTRY_FRAMING_BYTES:,} one log entry holds: send it in smaller "
                "parts (fewer records or turns a request)"
            )
        self._raft.propose(payload, done)
        try:
            result: dict[str, Any] = await asyncio.wait_for(future, timeout)
            return result
        except TimeoutError:
            raise Indeterminate(
                f"not committed within {timeout:g} s (no quorum?); it may or may not be applied later"
            ) from None

    def _refuse_while_catching_up(self) -> None:
        """Fail at once on a node far behind its leader (a wiped or new node installing a snapshot,
        a follower back from a partition): its reads and writes would wait the whole timeout for
        entries it has yet to apply. As etcd, which does not serve clients until it caught up; the
        client tries another node (``/readyz`` says the same)."""
        lag = self._raft.follower_lag()
        if lag is None:
            return
        ready, behind = lag
        if not ready:
            raise NotApplied("this node has not caught up with the leader since it started; retry, or ask another node")
        if behind > CATCHING_UP_ENTRIES:
            raise NotApplied(
                f"this node is catching up with the leader ({behind} committed entries still to apply); "
                "retry, or ask another node"
            )

    async def read_index(self, timeout: float, namespace: str | None = None) -> int:
        """A confirmed read index (Raft ReadIndex), once this node has applied it (for a read of one
        ``namespace``: what of it a read of that namespace can see)."""
        self._refuse_while_catching_up()
        return await self._index_when_applied(
            lambda done: self._raft.read_index.request(done, namespace),
            timeout,
            f"could not confirm the leader within {timeout:g} s (no quorum?)",
        )

    async def wait_applied(self, index: int, timeout: float, namespace: str | None = None) -> None:
        """Return once this node's store reflects Raft index ``index`` (including entries, like the
        leader's election no-op, that never reach the store), or with a ``namespace``, what of it a
        read of that namespace can see."""
        read_index = self._raft.read_index
        await self._index_when_applied(
            lambda done: self._raft.call_in_raft_thread(lambda: read_index.wait_applied(index, done, namespace)),
            timeout,
            f"this node has not applied index {index} within {timeout:g} s",
        )

    async def _index_when_applied(self, register: Callable[[Done], None], timeout: float, timeout_message: str) -> int:
        """Bridge a ReadIndex callback (run in the Raft thread once this node applied an index) to asyncio."""
        handoff = self._handoff()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def done(index: int | None, error: str | None) -> None:
            handoff.call(_settle_read, future, index, error)

        register(done)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise NotApplied(timeout_message) from None

    async def change_membership(self, action: str, raft_addr: str, timeout: float) -> None:
        """Add or remove a voter; one change at a time, through the log."""
        handoff = self._handoff()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(refusal: Refusal | None) -> None:
            handoff.call(_settle, future, True if refusal is None else None, refusal)

        self._raft.change_membership(action, raft_addr, done)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Indeterminate(f"membership change not committed within {timeout:g} s") from None

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` in the Raft thread each time applied entries were committed to the store."""
        self._raft.on_commit(listener)

    async def snapshot(self, timeout: float) -> dict[str, Any]:
        """Write a snapshot now (log compaction), off the Raft thread as always; returns its index,
        size and duration, or says why none was written."""
        snapshots = self._raft.snapshots
        before = (snapshots.written, snapshots.failed)
        self._raft.call_in_raft_thread(self._raft.forceLogCompaction)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (snapshots.written, snapshots.failed) == before:
            elapsed = loop.time() - started
            if elapsed > timeout:
                raise Indeterminate(f"the snapshot did not finish within {timeout:g} s; it may still")
            if elapsed > START_GRACE_S and not snapshots.busy:
                if snapshots.sending:
                    return {"written": False, "reason": "a snapshot is being sent to a follower; retry once it is done"}
                return {"written": False, "reason": "nothing was applied since the last snapshot"}
            await asyncio.sleep(0.05)
        last = snapshots.last
        assert last is not None
        if last.error is not None:
            raise Unavailable(f"the snapshot at index {last.index} failed: {last.error}")
        return {"written": True, "index": last.index, "bytes": last.size, "seconds": round(last.seconds, 3)}

    def transfer_leadership(self) -> None:
        """Hand leadership to a caught-up voter (used on graceful shutdown of the leader)."""
        self._raft.transfer_leadership()

    def is_leader(self) -> bool:
        return self._raft.is_leader()

    def leader_addr(self) -> str | None:
        return self._raft.leader_addr()

    def voters(self) -> list[str]:
        """Raft addresses of the voting members as this node currently knows them."""
        return self._raft.voters()

    def leader_changes(self) -> int:
        """Times this node saw a leader other than the last one it knew (the first counts)."""
        return self._raft.leader_changes

    def status(self) -> dict[str, Any]:
        """This node's view of Raft: role, term, indexes, log size, peers' match index."""
        return self._raft.status()

    def close(self) -> None:
        self._raft.close()
