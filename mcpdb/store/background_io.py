"""Keeping the store's background I/O out of the Raft thread's way: niceness and paced writeback.

LMDB runs NOSYNC (the Raft journal is the durable record), so every commit leaves dirty pages in
the page cache until the kernel's background threshold (``vm.dirty_background_ratio``, 10% of RAM:
2.4 GB on a 24 GB machine), which then goes out in one burst that every journal fsync on the disk
waits behind: measured with three nodes loading 600 k contexts, three fsyncs of 225-343 ms in a row
on every node and a probe write of about 1 s. ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts the
writeback of a file's dirty pages without waiting for it and without a device flush, so a thread
calling it twice a second lets the pages drain about as fast as they are dirtied (the same run: no
fsync over 100 ms, dirty pages at most 1.2 GB instead of 2.2 GB). Flushing with ``env.sync()``
(fdatasync) every second instead was tried and made stalls worse: it waits for the writeback and
the device flush, and commits stop behind it. Python's os module has no sync_file_range, so glibc's
is called through ctypes; where it is missing the thread does nothing.

The writeback thread runs at a lower CPU priority than the Raft and HTTP threads. The snapshot
copy does not: at nice 10 it took 2-4x longer under load (at 1 M contexts, 40-60 s instead of 15),
so snapshots ran back to back and each pinned LMDB's old pages longer, and probe stalls got no
better (measured with three nodes loading 1 M contexts).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Callable

_log = logging.getLogger(__name__)

BACKGROUND_NICE = 10  # below the Raft and HTTP threads (0)
WRITEBACK_PERIOD_S = 0.5
SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages in the range, do not wait

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def lower_priority() -> None:
    """Lower the calling thread's CPU priority (Linux nice values are per thread)."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def start_writeback(path: str) -> bool:
    """Ask the kernel to start writing ``path``'s dirty pages; False where that is not available."""
    if _sync_file_range is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), path)
    finally:
        os.close(fd)
    return True


class Writeback:
    """A thread starting the writeback of the store's data file every ``WRITEBACK_PERIOD_S``.

    ``data_file`` is asked each time: installing a snapshot swaps in a new LMDB generation.
    """

    def __init__(self, data_file: Callable[[], str]) -> None:
        self._data_file = data_file
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-writeback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.ident is not None:  # started
            self._thread.join()

    def _run(self) -> None:
        lower_priority()
        while not self._stopped.wait(WRITEBACK_PERIOD_S):
            try:
                if not start_writeback(self._data_file()):
                    return
            except OSError as error:  # a generation swapped out under us, or an I/O error: next time
                _log.debug("writeback of the store skipped: %s", error)
