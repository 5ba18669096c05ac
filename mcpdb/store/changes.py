"""Change streams: follow the store's change history from a version, in commit order.

The history lives in the replicated store (every replica records the same
changes at the same versions), so a watch can be served by any node and
resumed on another one from the last version it delivered. The Raft thread
wakes waiting watchers after each group commit; a watcher then reads what
was committed since its cursor. Nothing is pushed through queues, so a slow
watcher costs nothing until it reads, and falls behind only as far as the
history reaches (then ``HistoryTrimmed`` tells it where the history starts).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mcpdb.errors import InvalidCursor
from mcpdb.store.state_machine import Change, ContextStore

_CURSOR = re.compile(r"^(\d{1,19})(?:\.(\d{1,9}))?$")
READ_LIMIT = 1000


@dataclass(frozen=True)
class Cursor:
    """Where a watcher stands: after all of ``version``, or after change ``position`` of it."""

    version: int
    position: int | None = None

    @staticmethod
    def parse(text: str) -> Cursor:
        match = _CURSOR.fullmatch(text.strip())
        if match is None:
            raise InvalidCursor(f"since must be a version (12) or a version and position (12.3), got {text!r}")
        return Cursor(int(match[1]), int(match[2]) if match[2] is not None else None)


def event_id(change: Change, last_of_version: bool) -> str:
    """The change's SSE id: its version when no later change shares it, else ``version.position``.

    Resuming from either form gives the changes after exactly that one.
    """
    return str(change.version) if last_of_version else f"{change.version}.{change.position}"


@dataclass(frozen=True)
class WatchFilter:
    namespace: str
    prefix: str = ""
    kind: str | None = None

    def matches(self, change: Change) -> bool:
        return (
            change.namespace == self.namespace
            and change.id.startswith(self.prefix)
            and (self.kind is None or change.kind == self.kind)
        )


class ChangeFeed:
    """Wakes asyncio watchers when the Raft thread commits; one per node."""

    def __init__(self, store: ContextStore) -> None:
        self._store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    def on_commit(self) -> None:
        """Raft thread: entries were committed to LMDB."""
        if self._waiters and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_all)

    def next_commit(self) -> asyncio.Future[None]:
        """A future done at the next commit, registered now: take it before looking at the store, and
        a commit between the look and the wait still wakes the waiter. Cancel it when done waiting."""
        self._loop = asyncio.get_running_loop()
        waiter = self._loop.create_future()
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)
        return waiter

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def follow(self, cursor: Cursor, idle_timeout: float) -> AsyncIterator[list[tuple[Change, str]]]:
        """Yield the changes after ``cursor`` in commit order, each with its event id, as they commit;
        an empty list after ``idle_timeout`` seconds without any (a cue for keep-alives).

        Raises HistoryTrimmed (before or while following) when the history no longer reaches back.
        """
        while True:
            waiter = self.next_commit()  # before reading: a commit between the read and the wait still wakes us
            changes = self._store.changes_after(cursor.version, cursor.position, READ_LIMIT)
            if changes:
                waiter.cancel()
                complete = len(changes) < READ_LIMIT  # an entry's changes commit together
                identified = []
                for i, change in enumerate(changes):
                    following = changes[i + 1] if i + 1 < len(changes) else None
                    last = following.version != change.version if following else complete
                    identified.append((change, event_id(change, last)))
                last_change = changes[-1]
                cursor = Cursor(last_change.version, last_change.position)
                yield identified
                continue
            try:
                await asyncio.wait_for(waiter, idle_timeout)
            except TimeoutError:
                yield []
