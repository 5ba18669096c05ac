"""Calls from the Raft thread to an event loop, one wake-up per batch rather than one per call.

``loop.call_soon_threadsafe`` writes to the loop's self-pipe on every call: a system call in the Raft
thread, and a read and a callback in the loop for each. The Raft thread settles the futures of a whole
tick's writes at once (after the group commit), so most of those wake-ups were for a loop already
woken. ``LoopHandoff`` queues the calls and wakes the loop only when no run of the queue is already
scheduled; the loop runs them in the order they were queued.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable
from typing import Any


class LoopHandoff:
    """Runs calls queued by any thread on one event loop, in order.

    No call is left waiting while the loop runs: a producer queues first and then looks at the flag,
    and the loop clears the flag before it takes the queued calls, so a call queued after that finds
    the flag clear and schedules another run (at worst a run finds the queue empty). Calls for a loop
    that has closed are dropped: nothing can await its futures any more. The loop is held weakly, so
    a handoff kept for a finished loop (``Replication`` keeps one per loop) does not keep it alive.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._calls: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False

    def call(self, function: Callable[..., object], *args: Any) -> None:
        """Run ``function(*args)`` on the loop soon (any thread)."""
        self._calls.append((function, args))
        if self._scheduled:
            return
        self._scheduled = True
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # closed: asyncio refuses calls to a closed loop
            self._calls.clear()
            self._scheduled = False

    def _run(self) -> None:
        """Run the calls queued so far; those queued meanwhile get a run of their own, so that a busy
        producer cannot hold the loop in one callback."""
        self._scheduled = False
        calls = self._calls
        for _ in range(len(calls)):
            function, args = calls.popleft()
            try:
                function(*args)
            except Exception as error:  # noqa: BLE001 - reported as asyncio reports a failed callback
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"exception in {function!r}", "exception": error}
                )
