"""Where the Raft thread is held: a watchdog that logs the thread's stack when one tick runs long.

The Raft thread reports a stall only after the fact ("raft thread stalled 57.25 s", measured under
the fault harness at 1 M contexts), which says that it happened and not where. This thread looks
every ``CHECK_PERIOD_S``; when a tick has run longer than ``REPORT_AFTER_S`` it logs, once per tick,
the frames the Raft thread is in, innermost first, on one line. If the Raft thread holds the GIL in
a C call, this thread cannot run either: no report, and the later "stalled" line, is the clue. When
this thread itself went unscheduled for ``PAUSED_AFTER_S`` the whole process was stopped (SIGSTOP, a
paused VM: the fault harness's ``pause``), and a tick is timed from the resumption instead, not blamed
on the frame it happened to be in.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback

_log = logging.getLogger(__name__)

CHECK_PERIOD_S = 0.5
REPORT_AFTER_S = 2.0
FRAMES_SHOWN = 10
PAUSED_AFTER_S = 4 * CHECK_PERIOD_S


class StallWatch:
    """Told when each tick begins and ends (Raft thread); reports a long one from its own thread."""

    def __init__(self, report_after_s: float = REPORT_AFTER_S) -> None:
        self._report_after_s = report_after_s
        self._ident: int | None = None
        self._began = 0.0
        self._ticks = 0  # ticks begun
        self._ended = 0  # ticks ended
        self._reported = 0  # the tick last reported
        self._last_check = time.monotonic()
        self._resumed = 0.0  # when the process last came back from being stopped
        self.reports = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raft-stall-watch", daemon=True)

    def start(self) -> None:
        self._last_check = time.monotonic()  # start-up (journal load, bind) is no pause
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.ident is not None:
            self._thread.join()

    def tick_began(self) -> None:
        self._ident = threading.get_ident()
        self._began = time.monotonic()
        self._ticks += 1

    def tick_ended(self) -> None:
        self._ended = self._ticks

    def _run(self) -> None:
        while not self._stopped.wait(CHECK_PERIOD_S):
            self.check()

    def check(self) -> None:
        """Log the Raft thread's frames if its current tick has run too long (once per tick)."""
        tick, ident = self._ticks, self._ident
        now = time.monotonic()
        if now - self._last_check > PAUSED_AFTER_S:
            self._resumed = now
        self._last_check = now
        held = now - max(self._began, self._resumed)
        if ident is None or tick == self._ended or tick == self._reported or held < self._report_after_s:
            return
        frame = sys._current_frames().get(ident)  # noqa: SLF001 - the one way to see another thread's stack
        if frame is None or self._ended == tick or self._ticks != tick:  # the tick ended meanwhile
            return
        self._reported = tick
        self.reports += 1
        frames = traceback.extract_stack(frame)[::-1][:FRAMES_SHOWN]
        where = " <- ".join(f"{summary.name} ({_short(summary.filename)}:{summary.lineno})" for summary in frames)
        _log.warning("raft thread held %.1f s in one tick, in: %s", held, where)


def _short(path: str) -> str:
    """``.../site-packages/pysyncobj/syncobj.py`` -> ``pysyncobj/syncobj.py``."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])
