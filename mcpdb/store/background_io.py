"""Keeping the store's background I/O out of the Raft thread's way: paced writeback, gradual deletion.

LMDB runs NOSYNC (the Raft journal is the durable record), so every commit leaves dirty pages in
the page cache until the kernel's background threshold (``vm.dirty_background_ratio``, 10% of RAM:
2.4 GB on a 24 GB machine), which then goes out in one burst that every journal fsync on the disk
waits behind: measured with three nodes loading 600 k contexts, three fsyncs of 225-343 ms in a row
on every node and a probe write of about 1 s. ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts the
writeback of a file's dirty pages without waiting for it and without a device flush, so a thread
calling it twice a second lets the pages drain about as fast as they are dirtied (the same run: no
fsync over 100 ms, dirty pages at most 1.2 GB instead of 2.2 GB). Flushing with ``env.sync()``
(fdatasync) every second instead was tried and made stalls worse: it waits for the writeback and
the device flush, and commits stop behind it. (A snapshot streamed to its file is the opposite case:
small fdatasyncs every MiB beat ``sync_file_range`` there, see ``snapshot._copy_paced``.) Python's os
module has no sync_file_range, so glibc's is called through ctypes; where it is missing the thread
does nothing.

Large files are deleted gradually, by one thread (``retire``, as RocksDB's DeleteScheduler does):
freeing a 2 GB snapshot in one unlink (``os.replace`` over the old snapshot is one) held the Raft
thread, and ext4's journal commit behind it held every fsync on the disk, for longer than an
election timeout: at 1 M contexts nearly every finished snapshot was followed by an election. A
retired file is renamed (or linked) aside at once, and the thread truncates it ``DELETE_STEP``
bytes at a time, so each journal commit frees a little. (The LMDB generation a snapshot install
replaces is still removed where it is replaced: a read may still map it, so it must not shrink.)

The writeback and deletion threads, and the thread writing a snapshot, do their disk I/O in the
idle class (``idle_io``): three nodes sharing a disk each wrote a 2 GB snapshot at once, and
every journal fsync queued behind those writes in the block layer (threads sampled in D state
waited in ``wbt_wait`` and ``blk_mq_get_tag``). The writeback and deletion threads also run at a
lower CPU priority than the Raft and HTTP threads. The snapshot copy does not: at nice 10 it
took 2-4x longer under load (at 1 M contexts, 40-60 s instead of 15), so snapshots ran back to
back and each pinned LMDB's old pages longer, and probe stalls got no better (measured with
three nodes loading 1 M contexts).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

import psutil

_log = logging.getLogger(__name__)

BACKGROUND_NICE = 10  # below the Raft and HTTP threads (0)
WRITEBACK_PERIOD_S = 0.5
SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages in the range, do not wait

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


DELETE_STEP = 64 << 20
DELETE_PAUSE_S = 0.1  # between steps: at most 640 MB/s freed
TRASH_PREFIX = ".trash-"  # no reader of a data directory looks at dot-names


def lower_priority() -> None:
    """Lower the calling thread's CPU priority (Linux nice values are per thread) and make its
    disk I/O idle-class (``idle_io``)."""
    thread = threading.get_native_id()
    try:  # never raise it back above where it is: an unprivileged node started at nice 15 may not
        os.setpriority(os.PRIO_PROCESS, thread, max(os.getpriority(os.PRIO_PROCESS, thread), BACKGROUND_NICE))
    except OSError as error:
        _log.debug("CPU priority unchanged: %s", error)
    idle_io()


def idle_io() -> None:
    """Put the calling thread's disk I/O in the idle class: the block layer's scheduler (mq-deadline,
    BFQ) serves it when no best-effort I/O, such as the journal's fsyncs, is waiting, and ages it
    so it is never starved for long. Bulk writes a thread issues itself (its own fdatasync,
    sync_file_range, truncate) are submitted in its context and carry its class; the journal commit
    and device cache flush an fdatasync causes do not. Where the kernel refuses, the thread keeps
    the default class."""
    try:
        psutil.Process(threading.get_native_id()).ionice(psutil.IOPRIO_CLASS_IDLE)
    except (psutil.Error, OSError) as error:
        _log.debug("I/O priority unchanged: %s", error)


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


class _Deleter:
    """The one thread freeing retired files a step at a time (started with the first retirement)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def trash_path(self, path: str, directory: str | None = None) -> str:
        beside, name = os.path.split(os.path.abspath(path))
        return os.path.join(directory or beside, f"{TRASH_PREFIX}{os.getpid()}-{next(self._numbers)}-{name}")

    def submit(self, trash: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gradual-delete", daemon=True)
                self._thread.start()
        self._queue.put(trash)

    def _run(self) -> None:
        lower_priority()
        while True:
            trash = self._queue.get()
            try:
                _free_gradually(trash)
            except FileNotFoundError:  # already freed (submitted twice: a leftover seen again)
                continue
            except OSError as error:  # logged, never raised: the space comes back at the next start
                _log.warning("could not delete %s: %s", trash, error)


def _free_gradually(path: str) -> None:
    with open(path, "r+b") as file:
        size = os.fstat(file.fileno()).st_size
        while size > DELETE_STEP:
            size -= DELETE_STEP
            file.truncate(size)
            time.sleep(DELETE_PAUSE_S)
    os.unlink(path)


_deleter = _Deleter()


def retire(path: str, into: str | None = None) -> None:
    """Take the file at ``path`` out of the way now (into directory ``into`` of the same file system, if
    given: its own is about to go) and free its space gradually in the background. The rename is not
    made durable here: the caller fsyncs the directory when it must."""
    trash = _deleter.trash_path(path, into)
    os.rename(path, trash)
    _deleter.submit(trash)


def link_aside(path: str) -> str | None:
    """Before ``os.replace(new, path)``: a second name for the file at ``path``, so the replace
    frees nothing (``path`` itself stays until the replace: no moment without it, as two renames
    would leave). Hand the result to ``free_later`` once nothing reads the old file any more."""
    if not os.path.exists(path):
        return None
    trash = _deleter.trash_path(path)
    try:
        os.link(path, trash)
    except OSError as error:  # a file system without hard links: the replace frees it, as before
        _log.debug("no second name for %s: %s", path, error)
        return None
    return trash


def free_later(trash: str | None) -> None:
    """Free a file ``link_aside`` named, gradually, in the background."""
    if trash is not None:
        _deleter.submit(trash)


def delete_leftover_trash(directory: str) -> None:
    """Free what a stopped process had retired and not yet freed (at start-up)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(TRASH_PREFIX):
                _deleter.submit(os.path.join(directory, name))
