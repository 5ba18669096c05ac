"""Read barriers: what a linearizable read waits for, shared by concurrent reads.

A read is linearizable if it observes every write that completed before the
read began. The barrier is a confirmed read index (Raft ReadIndex, see
``read_index``): once this node has applied it, its local store holds every
write committed before the read arrived, on the leader and on followers alike.

Reads arriving in the same iteration of the event loop share one request to
the Raft thread per namespace they read (or none: anything), made after all
of them arrived (``call_soon``); requests overlap, so a read never waits for an
earlier batch's round trip. A read of one namespace waits only for what of
the log up to its read index concerns that namespace (``read_index``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Confirm = Callable[[float, str | None], Awaitable[int]]  # (timeout, namespace read or None)


class ReadBarrier:
    """Coalesces concurrent linearizable reads onto shared read-index confirmations."""

    def __init__(self, confirm: Confirm, timeout: float) -> None:
        self._confirm = confirm
        self._timeout = timeout
        self._waiting: dict[str | None, list[asyncio.Future[int]]] = {}
        self._scheduled = False
        self.batches = 0
        self.reads = 0
        self.last_batch_size = 0

    async def wait(self, namespace: str | None = None) -> int:
        """Return once this node's store reflects every write committed before the call (with a
        ``namespace``: every such write a read of that namespace can see).

        The result is the read index this read was served at.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._waiting.setdefault(namespace, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._launch)
        return await future

    def _launch(self) -> None:
        waiting, self._waiting = self._waiting, {}
        self._scheduled = False
        self.batches += 1
        self.last_batch_size = sum(len(batch) for batch in waiting.values())
        self.reads += self.last_batch_size
        loop = asyncio.get_running_loop()
        for namespace, batch in waiting.items():
            loop.create_task(self._run(namespace, batch))

    async def _run(self, namespace: str | None, batch: list[asyncio.Future[int]]) -> None:
        try:
            index = await self._confirm(self._timeout, namespace)
        except Exception as error:  # noqa: BLE001 - every waiter gets the same failure
            for future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for future in batch:
                if not future.done():
                    future.set_result(index)
