"""The Raft thread's stall watchdog reports where a long tick is held, once per tick, and not a short one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mcpdb.raft.stall_watch import StallWatch


def _held_in_a_long_call(watch: StallWatch, entered: threading.Event, release: threading.Event) -> None:
    watch.tick_began()
    entered.set()
    release.wait(10)
    watch.tick_ended()


@contextmanager
def _a_tick_held(watch: StallWatch) -> Iterator[None]:
    """A thread standing in for the Raft thread, inside one tick until the block ends."""
    entered, release = threading.Event(), threading.Event()
    raft = threading.Thread(target=_held_in_a_long_call, args=(watch, entered, release))
    raft.start()
    try:
        assert entered.wait(5)
        yield
    finally:
        release.set()
        raft.join()


def test_a_long_tick_is_reported_once_with_its_frames(caplog: pytest.LogCaptureFixture) -> None:
    watch = StallWatch(report_after_s=1.0)
    with _a_tick_held(watch), caplog.at_level(logging.WARNING, logger="mcpdb.raft.stall_watch"):
        watch.check()  # too early (a second's margin): nothing
        assert watch.reports == 0
        time.sleep(1.2)
        watch.check()
        watch.check()  # the same tick: not again
    assert watch.reports == 1
    [record] = [record for record in caplog.records if record.name == "mcpdb.raft.stall_watch"]
    assert "raft thread held" in record.getMessage()
    assert "_held_in_a_long_call (tests/test_stall_watch.py:" in record.getMessage()
    assert "\n" not in record.getMessage()
    watch.check()  # the tick ended: nothing more
    assert watch.reports == 1


def test_short_ticks_are_not_reported() -> None:
    watch = StallWatch(report_after_s=0.05)
    for _ in range(3):
        watch.tick_began()
        watch.tick_ended()
    time.sleep(0.1)
    watch.check()
    assert watch.reports == 0


def test_a_stopped_process_is_not_blamed_on_the_tick_it_was_in() -> None:
    """SIGSTOP stops every thread: when the watchdog itself missed its checks, the tick is timed from the
    resumption."""
    watch = StallWatch(report_after_s=0.05)
    with _a_tick_held(watch):
        time.sleep(0.1)
        watch._last_check -= 10  # as if this process had been stopped for 10 s
        watch.check()
        assert watch.reports == 0
        time.sleep(0.1)
        watch.check()  # held 0.1 s since the resumption: reported
        assert watch.reports == 1
