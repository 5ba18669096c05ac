"""Calls handed from another thread to an event loop: all run, in order, with fewer wake-ups than calls."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pytest

from mcpdb.raft.loop_handoff import LoopHandoff

CALLS = 20_000


class _CountingLoop:
    """The loop's ``call_soon_threadsafe``, counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.wakeups = 0
        self._call_soon_threadsafe = loop.call_soon_threadsafe

    def __call__(self, *args: Any) -> Any:
        self.wakeups += 1
        return self._call_soon_threadsafe(*args)


def test_every_call_from_another_thread_runs_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        counting = _CountingLoop(loop)
        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        handoff = LoopHandoff(loop)
        seen: list[int] = []
        all_ran = asyncio.Event()

        def record(number: int) -> None:
            seen.append(number)
            if number == CALLS - 1:
                all_ran.set()

        def produce() -> None:
            for number in range(CALLS):
                handoff.call(record, number)

        producer = threading.Thread(target=produce)
        producer.start()
        await asyncio.wait_for(all_ran.wait(), 30)
        producer.join()
        await asyncio.sleep(0.05)  # a run scheduled after the last call finds nothing more to do
        return seen, counting.wakeups

    seen, wakeups = asyncio.run(main())
    assert seen == list(range(CALLS))
    assert 1 <= wakeups < CALLS


def test_a_failing_call_is_reported_and_the_rest_still_run() -> None:
    async def main() -> tuple[list[str], list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        handoff = LoopHandoff(loop)
        ran: list[str] = []

        def fail() -> None:
            raise ValueError("boom")

        handoff.call(fail)
        handoff.call(ran.append, "after")
        await asyncio.sleep(0.01)
        return ran, reported

    ran, reported = asyncio.run(main())
    assert ran == ["after"]
    assert isinstance(reported[0]["exception"], ValueError)


def test_calls_for_a_closed_loop_are_dropped_without_raising() -> None:
    loop = asyncio.new_event_loop()
    handoff = LoopHandoff(loop)
    loop.close()
    ran: list[int] = []
    for number in range(3):
        handoff.call(ran.append, number)  # the Raft thread must not raise: nobody awaits these any more
    assert ran == [] and not handoff._calls


def test_a_handoff_does_not_keep_its_loop_alive() -> None:
    loop = asyncio.new_event_loop()
    handoff = LoopHandoff(loop)
    gone = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert gone() is None
    handoff.call(print, "never")  # and a call after that is dropped too
    assert not handoff._calls
