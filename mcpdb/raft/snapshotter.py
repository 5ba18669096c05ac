"""Log compaction off the Raft thread: snapshots written by a thread of their own, sent in bounded chunks.

pysyncobj writes a snapshot synchronously in its one thread when a serializer is configured (it only
forks for its own pickled state). At a few GB that stopped the Raft thread for seconds: no
heartbeats, an election, reads and writes waiting. Here the Raft thread only pins the version
(``ContextStore.pin_snapshot``: a commit and a read transaction, microseconds) and a worker thread
copies it (``mcpdb.store.snapshot.write``: LMDB's copy releases the GIL). pysyncobj polls
``finished()`` every tick and compacts the journal once the file is in place, exactly as it does
after its own forked child.

Sending: the leader streams the current snapshot file to a lagging follower in chunks read from an
open handle (the file is replaced by rename, so a transfer that started keeps reading the old
file's inode; a new snapshot restarts transfers, as pysyncobj's serializer does). pysyncobj keeps
asking for chunks for up to a heartbeat period per tick; a chunk is refused while the connection
still has ``MAX_BACKLOG`` bytes unsent, since its send buffer is one ``bytes`` that every send
appends to and every partial write slices (quadratic in the backlog).

Receiving streams chunks to a temporary file and renames it over the snapshot when the last one
arrives; the store then installs it (``ContextStore.install_snapshot``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, BinaryIO

from mcpdb.fsutil import fsync_path
from mcpdb.store import snapshot
from mcpdb.store.state_machine import ContextStore

_log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_BACKLOG = 4 << 20
RETRY_AFTER_FAILURE_S = 10.0


@dataclass(frozen=True)
class Written:
    """A snapshot that finished (``error`` None) or failed."""

    index: int
    size: int
    seconds: float
    error: BaseException | None


class Snapshotter:
    """Writes snapshots on a worker thread and serves the current one in chunks. Raft thread only,
    except the worker, which touches nothing but its own result."""

    def __init__(self, path: str, store: ContextStore, fits: Callable[[int], bool]) -> None:
        self._path = path
        self._store = store
        self._fits = fits
        self._not_before = 0.0  # after a failure, the next attempt waits (pysyncobj asks every tick)
        self._worker: threading.Thread | None = None
        self._result: Written | None = None
        self._outgoing: dict[Hashable, BinaryIO] = {}
        self._incoming: BinaryIO | None = None
        self.written = 0
        self.failed = 0
        self.last: Written | None = None

    # ----------------------------------------------------------------- writing
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(self, raft_data: Any) -> None:
        """Pin the applied state and write it in the background (no-op while one is being written)."""
        if self._worker is not None or time.monotonic() < self._not_before:
            return
        if not self._fits(self._store.stats()["size_bytes"]):
            self._not_before = time.monotonic() + RETRY_AFTER_FAILURE_S
            return
        pinned = self._store.pin_snapshot()
        _log.info("snapshot at index %d started", pinned.index)
        self._worker = threading.Thread(
            target=self._write, args=(pinned, raft_data), name=f"snapshot-{pinned.index}", daemon=True
        )
        self._worker.start()

    def _write(self, pinned: snapshot.PinnedVersion, raft_data: Any) -> None:
        started = time.monotonic()
        tmp = self._path + ".writing"
        index = pinned.index
        try:
            size = snapshot.write(tmp, pinned, raft_data)
            os.replace(tmp, self._path)
            fsync_path(os.path.dirname(os.path.abspath(self._path)))
            self._result = Written(index, size, time.monotonic() - started, None)
        except BaseException as error:  # noqa: BLE001 - reported to the Raft thread, which retries later
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self._result = Written(index, 0, time.monotonic() - started, error)

    def finished(self) -> Written | None:
        """The snapshot that finished since the last call, if any (Raft thread)."""
        worker, result = self._worker, self._result
        if worker is None or result is None:
            return None
        worker.join()
        self._worker, self._result, self.last = None, None, result
        if result.error is None:
            self.written += 1
            _log.info(
                "snapshot at index %d written: %.1f MB in %.2f s",
                result.index,
                result.size / 1e6,
                result.seconds,
            )
            self._drop_outgoing()  # transfers restart from the new file
        else:
            self.failed += 1
            self._not_before = time.monotonic() + RETRY_AFTER_FAILURE_S
            _log.error("snapshot at index %d failed: %s", result.index, result.error)
        return result

    # ----------------------------------------------------------------- sending
    def chunk(self, node: Hashable, backlog: int) -> tuple[bytes, bool, bool] | None:
        """The next chunk of the current snapshot for ``node``: (data, first, last); None to send
        nothing now (the connection is still busy, or there is no snapshot)."""
        if backlog > MAX_BACKLOG:
            return None
        source = self._outgoing.get(node)
        first = source is None
        if source is None:
            try:
                source = open(self._path, "rb")
            except OSError:
                return None
            self._outgoing[node] = source
        data = source.read(CHUNK_BYTES)
        last = not data
        if last:
            self.cancel(node)
        return data, first, last

    def cancel(self, node: Hashable) -> None:
        source = self._outgoing.pop(node, None)
        if source is not None:
            source.close()

    def _drop_outgoing(self) -> None:
        for node in list(self._outgoing):
            self.cancel(node)

    # --------------------------------------------------------------- receiving
    def receive(self, chunk: tuple[bytes, bool, bool] | None) -> bool:
        """Take one chunk from the leader; True once the whole snapshot is in place."""
        if chunk is None:
            return False
        data, first, last = chunk
        tmp = self._path + ".receiving"
        if first:
            if self._incoming is not None:
                self._incoming.close()
            self._incoming = open(tmp, "wb")
            _log.info("receiving a snapshot from the leader")
        if self._incoming is None:
            return False  # a transfer that began before this node started: wait for the next one
        self._incoming.write(data)
        if not last:
            return False
        self._incoming.flush()
        os.fsync(self._incoming.fileno())
        self._incoming.close()
        self._incoming = None
        os.replace(tmp, self._path)
        fsync_path(os.path.dirname(os.path.abspath(self._path)))
        return True

    def install(self, after: Callable[[], None]) -> Any:
        """Install the snapshot file into the store; ``after`` runs once it is in place."""
        started = time.monotonic()
        installed = self._store.snapshots_installed
        raft_data = self._store.install_snapshot(self._path)
        after()
        if self._store.snapshots_installed != installed:
            _log.info("snapshot at index %d installed in %.2f s", raft_data[0][1], time.monotonic() - started)
        return raft_data

    def close(self) -> None:
        """Wait for a snapshot being written; close open transfers."""
        worker = self._worker
        if worker is not None:
            worker.join()
        self._drop_outgoing()
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None
