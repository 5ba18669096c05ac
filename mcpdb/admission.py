"""A bounded queue in front of work that takes a core: so many at once, so many waiting, the rest refused.

A semaphore alone queues without end: one token firing searches faster than they finish made every
other tenant's search wait behind them (measured: a lexical search waited 69 s behind twelve vector
searches of one token). A request beyond the queue is refused at once with 503 and Retry-After, as a
saturated etcd or rqlite answers, and the caller decides; what was admitted waits at most the queue's
length of work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mcpdb.errors import Overloaded


class Admission:
    """At most ``running`` holders at once and ``waiting`` queued behind them; ``what`` names the work in
    the refusal."""

    def __init__(self, running: int, waiting: int, what: str) -> None:
        self._slots = asyncio.Semaphore(running)
        self._running, self._waiting, self._queued = running, waiting, 0
        self._what = what

    @property
    def queued(self) -> int:
        """How many wait for a slot now."""
        return self._queued

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the slots for the block; Overloaded at once when the queue is full."""
        if self._slots.locked() and self._queued >= self._waiting:
            raise Overloaded(
                f"this node is already running {self._running} {self._what} with {self._queued} waiting; "
                "retry after a moment or ask another node"
            )
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        try:
            yield
        finally:
            self._slots.release()
