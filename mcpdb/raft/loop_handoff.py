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
from collections.abc import Callable
from typing import Any


class LoopHandoff:
    """Runs calls queued by any thread on one event loop, in order.

    No call is left waiting: a producer queues first and then looks at the flag, and the loop clears
    the flag before it empties the queue, so a call queued after the loop's last look finds the flag
    clear and schedules another run (at worst a run finds the queue empty).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False

    def call(self, function: Callable[..., object], *args: Any) -> None:
        """Run ``function(*args)`` on the loop soon (any thread)."""
        self._calls.append((function, args))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        self._scheduled = False
        calls = self._calls
        while calls:
            function, args = calls.popleft()
            try:
                function(*args)
            except Exception as error:  # noqa: BLE001 - reported as asyncio reports a failed callback
                self._loop.call_exception_handler({"message": f"exception in {function!r}", "exception": error})
