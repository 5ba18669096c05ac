"""The disk alarm: a node that cannot reserve disk space stops taking writes instead of crashing.

As etcd's NOSPACE alarm: the journal and the store each keep ``--disk-reserve-bytes`` allocated ahead of
what they hold (``posix_fallocate``), so running out of disk shows up as a failed reservation
while there is still reserved room to finish what is in flight, never as a write that fails half
way (or, through pysyncobj's mmap, as SIGBUS). While the alarm is raised this node proposes
nothing (clients get 507 ``insufficient_storage``), refuses entries forwarded to it as leader,
accepts entries from a leader only into the room it has reserved, keeps serving reads, and says so
in ``/readyz``, ``/metrics`` and ``mcpdb status``. The Raft thread re-checks once a second; the
alarm clears by itself once every reservation holds again. Nothing acknowledged is at risk: an
entry this node cannot store is never acknowledged by it.

A snapshot needs room for a full copy of the store: one that would not fit is not started (the
journal then keeps its entries, still within its reservation), and the alarm names it. A snapshot
received from the leader needs twice its LMDB file's size (the rest of the file, and the copy of
its LMDB file made as it arrives): one that would not fit is refused at its first chunk, with the
same reason in the alarm, until the leader sends it again and it fits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from mcpdb.raft.journal import NO_SPACE, Journal

_log = logging.getLogger(__name__)

CHECK_PERIOD_S = 1.0


@dataclass(frozen=True)
class DiskState:
    """What the alarm reports: raised, why (one line per part), and the free space it saw."""

    alarm: bool
    reasons: tuple[str, ...]
    free_bytes: int


def free_bytes(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def reserve_file(path: str, used: int, reserve: int) -> bool:
    """Keep ``reserve`` bytes allocated past ``used`` bytes of the file at ``path``; False if the
    disk refused."""
    try:
        size = os.stat(path).st_size
        if size >= used + reserve // 2:
            return True
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, used + reserve)
        finally:
            os.close(fd)
    except OSError as error:
        if error.errno in NO_SPACE:
            return False
        raise
    return True


class DiskAlarm:
    """Raised when the journal, the store or a snapshot cannot get its disk space. Raft thread only,
    except ``state``, which any thread may read (one attribute, replaced whole)."""

    def __init__(
        self,
        directory: str,
        journal: Callable[[], Journal | None],
        store_file: Callable[[], tuple[str, int]],
        reserve: int,
    ) -> None:
        self._directory = directory
        self._reserve = reserve
        self._journal = journal
        self._store_file = store_file
        self._snapshot_refused: str | None = None
        self._next_check = 0.0
        self.state = DiskState(False, (), 0)

    @property
    def raised(self) -> bool:
        return self.state.alarm

    def snapshot_fits(self, size: int) -> bool:
        """Whether a snapshot of about ``size`` bytes fits beside everything reserved; records why not."""
        free = free_bytes(self._directory)
        if free >= size + self._reserve:
            if self._snapshot_refused is not None:
                self._snapshot_refused = None
                self._next_check = 0.0
            return True
        needs = f"needs about {size / 1e6:.0f} MB and {self._reserve / 1e6:.0f} MB spare"
        self._snapshot_refused = f"snapshot: {needs}, {free / 1e6:.0f} MB free"
        self._next_check = 0.0
        return False

    def check(self) -> None:
        """Re-take every reservation, at most once a second (Raft thread)."""
        now = time.monotonic()
        journal = self._journal()
        urgent = journal is not None and journal.low_space and not self.state.alarm
        if now < self._next_check and not urgent:
            return
        self._next_check = now + CHECK_PERIOD_S
        reasons = []
        if journal is not None and not journal.retry_reserve():
            reasons.append(f"journal: cannot reserve {self._reserve / 1e6:.0f} MB ({journal.room} bytes left reserved)")
        path, used = self._store_file()
        if not reserve_file(path, used, self._reserve):
            reasons.append(f"store: cannot reserve {self._reserve / 1e6:.0f} MB past its {used / 1e6:.0f} MB")
        if self._snapshot_refused is not None:
            reasons.append(self._snapshot_refused)
        state = DiskState(bool(reasons), tuple(reasons), free_bytes(self._directory))
        if state.alarm and not self.state.alarm:
            _log.error(
                "disk alarm raised, writes refused: %s (%d MB free)", "; ".join(reasons), state.free_bytes // 10**6
            )
        elif state.alarm and state.reasons != self.state.reasons:
            _log.error("disk alarm still raised: %s", "; ".join(reasons))
        elif not state.alarm and self.state.alarm:
            _log.warning("disk alarm cleared, writes accepted again (%d MB free)", state.free_bytes // 10**6)
        self.state = state
