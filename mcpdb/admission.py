"""A bounded queue in front of work that takes a core: so many at once, so many waiting, the rest refused.

A semaphore alone queues without end: one token firing searches faster than they finish made every
other tenant's search wait behind them (measured: a lexical search waited 69 s behind twelve vector
searches of one token). A request beyond the queue is refused at once with 503 and Retry-After, as a
saturated etcd or rqlite answers, and the caller decides; what was admitted waits at most the queue's
length of work. A bounded queue alone is still one queue: an outside probe's thirty threads searching
one namespace kept it full, and another tenant's hybrid searches got 503 49 times in 49. So each key
(a namespace: a tenant) may hold only a share of it, running and waiting together, and the rest stays
open to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Hashable

from mcpdb.errors import Overloaded


class Admission:
    """At most ``running`` holders at once and ``waiting`` queued behind them, and at most ``per_key`` of
    them (running or waiting) for any one key; ``what`` names the work in the refusal."""

    def __init__(self, running: int, waiting: int, what: str, per_key: int | None = None) -> None:
        self._slots = asyncio.Semaphore(running)
        self._running, self._waiting, self._queued = running, waiting, 0
        self._what = what
        self._per_key = per_key
        self._held: Counter[Hashable] = Counter()

    @property
    def queued(self) -> int:
        """How many wait for a slot now."""
        return self._queued

    @contextlib.asynccontextmanager
    async def slot(self, key: Hashable = None) -> AsyncIterator[None]:
        """Hold one of the slots for the block; Overloaded at once when the queue is full, or when ``key``
        already holds its share."""
        if self._per_key is not None and self._held[key] >= self._per_key:
            raise Overloaded(
                f"{key} already has {self._held[key]} {self._what} running or waiting on this node, its share; "
                "retry after a moment or ask another node"
            )
        if self._slots.locked() and self._queued >= self._waiting:
            raise Overloaded(
                f"this node is already running {self._running} {self._what} with {self._queued} waiting; "
                "retry after a moment or ask another node"
            )
        self._held[key] += 1
        try:
            self._queued += 1
            try:
                await self._slots.acquire()
            finally:
                self._queued -= 1
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]
