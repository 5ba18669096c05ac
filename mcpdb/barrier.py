"""Batched read barriers: linearizable reads on any node for one log entry per batch.

A read is linearizable if it observes every write that completed before the
read began. A barrier is a no-op log entry: once this node has applied a
barrier proposed *after* the read arrived, its local store holds every write
committed before the read arrived, on the leader and on followers alike.

At most one barrier is in flight. Reads that arrive while it is in flight
wait for the next one (the current one may have been proposed before they
arrived, so it proves nothing to them); all of them share that next barrier.
Under load a barrier costs one log entry per round trip, not one per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Propose = Callable[[dict[str, Any], float], Awaitable[dict[str, Any]]]


class ReadBarrier:
    """Coalesces concurrent linearizable reads onto shared barrier entries."""

    def __init__(self, propose: Propose, timeout: float) -> None:
        self._propose = propose
        self._timeout = timeout
        self._waiting: list[asyncio.Future[int]] = []
        self._in_flight = False
        self.batches = 0
        self.reads = 0
        self.last_batch_size = 0

    async def wait(self) -> int:
        """Return once this node's store reflects every write committed before the call.

        The result is the barrier's log index: the read index of this read.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if not self._in_flight:
            self._launch()
        return await future

    def _launch(self) -> None:
        batch, self._waiting = self._waiting, []
        self._in_flight = True
        self.batches += 1
        self.reads += len(batch)
        self.last_batch_size = len(batch)
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[asyncio.Future[int]]) -> None:
        try:
            result = await self._propose({"op": "barrier"}, self._timeout)
        except Exception as error:  # noqa: BLE001 - every waiter gets the same failure
            for future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for future in batch:
                if not future.done():
                    future.set_result(result["version"])
        finally:
            self._in_flight = False
            if self._waiting:
                self._launch()
