"""Read barriers: what a linearizable read waits for, shared by concurrent reads.

A read is linearizable if it observes every write that completed before the
read began. The barrier is a confirmed read index (Raft ReadIndex, see
``read_index``): once this node has applied it, its local store holds every
write committed before the read arrived, on the leader and on followers alike.

Reads arriving in the same iteration of the event loop share one request to
the Raft thread, made after all of them arrived (``call_soon``); requests
overlap, so a read never waits for an earlier batch's round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Confirm = Callable[[float], Awaitable[int]]


class ReadBarrier:
    """Coalesces concurrent linearizable reads onto shared read-index confirmations."""

    def __init__(self, confirm: Confirm, timeout: float) -> None:
        self._confirm = confirm
        self._timeout = timeout
        self._waiting: list[asyncio.Future[int]] = []
        self._scheduled = False
        self.batches = 0
        self.reads = 0
        self.last_batch_size = 0

    async def wait(self) -> int:
        """Return once this node's store reflects every write committed before the call.

        The result is the read index this read was served at.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._waiting.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._launch)
        return await future

    def _launch(self) -> None:
        batch, self._waiting = self._waiting, []
        self._scheduled = False
        self.batches += 1
        self.reads += len(batch)
        self.last_batch_size = len(batch)
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[asyncio.Future[int]]) -> None:
        try:
            index = await self._confirm(self._timeout)
        except Exception as error:  # noqa: BLE001 - every waiter gets the same failure
            for future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for future in batch:
                if not future.done():
                    future.set_result(index)
