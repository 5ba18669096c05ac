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

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, BinaryIO

from mcpdb.fsutil import fsync_path
from mcpdb.store import background_io, snapshot
from mcpdb.store.state_machine import ContextStore

_log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_BACKLOG = 4 << 20
RETRY_AFTER_FAILURE_S = 10.0
# Sending a snapshot costs the Raft thread about 1.3 ms per MiB (read, pickle, a stored zlib stream:
# ``wire.frame``); paced, streaming leaves the rest of the thread for commits. On a link slower than the
# pace, ``MAX_BACKLOG`` paces it instead: heartbeats queue behind 4 MiB at most.
STREAM_BYTES_PER_S = 128 << 20
# While a transfer younger than this runs, the node takes no snapshot: one finishing would restart
# the transfer (and at 1 M contexts, with a snapshot every 20 s, a 2 GB transfer never ended).
TRANSFER_HOLD_S = 120.0


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
        self._sending_since: dict[Hashable, float] = {}
        self._stream_allowance = float(MAX_BACKLOG)  # bytes: a token bucket at STREAM_BYTES_PER_S
        self._stream_refilled = time.monotonic()
        self._incoming: BinaryIO | None = None
        # The received snapshot's LMDB file, copied into the store's next generation as it arrives;
        # ``_extracted`` says the file now at ``path`` was copied whole, so the install copies nothing.
        self._extraction: snapshot.Extraction | None = None
        self._extracted = False
        self._writing = path + ".writing"
        self._unflushed = 0
        self._receiving = path + ".receiving"
        self._installs = 0  # snapshots received from a leader and renamed into place
        background_io.delete_leftover_trash(os.path.dirname(os.path.abspath(path)))
        self._installs_at_start = 0
        self.written = 0
        self.failed = 0
        self.older_refused = 0  # whole snapshots from a leader at or below the applied index (``receive``)
        self.last: Written | None = None

    # ----------------------------------------------------------------- writing
    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def sending(self) -> bool:
        """Whether a transfer to a follower began less than ``TRANSFER_HOLD_S`` ago."""
        now = time.monotonic()
        return any(now - since < TRANSFER_HOLD_S for since in self._sending_since.values())

    def start(self, raft_data: Any) -> None:
        """Pin the applied state and write it in the background (no-op while one is being written,
        or while one is being sent: see ``TRANSFER_HOLD_S``)."""
        if self._worker is not None or time.monotonic() < self._not_before or self.sending:
            return
        if not self._fits(self._store.stats()["size_bytes"]):
            self._not_before = time.monotonic() + RETRY_AFTER_FAILURE_S
            return
        pinned = self._store.pin_snapshot()
        self._installs_at_start = self._installs
        _log.info("snapshot at index %d started", pinned.index)
        self._worker = threading.Thread(
            target=self._write, args=(pinned, raft_data), name=f"snapshot-{pinned.index}", daemon=True
        )
        self._worker.start()

    def _write(self, pinned: snapshot.PinnedVersion, raft_data: Any) -> None:
        background_io.idle_io()  # its writes and flushes wait for the journal's fsyncs, not the reverse
        started = time.monotonic()
        try:
            size = snapshot.write(self._writing, pinned, raft_data)
            self._result = Written(pinned.index, size, time.monotonic() - started, None)
        except BaseException as error:  # noqa: BLE001 - reported to the Raft thread, which retries later
            self._discard(self._writing)
            self._result = Written(pinned.index, 0, time.monotonic() - started, error)

    @staticmethod
    def _discard(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def finished(self) -> Written | None:
        """The snapshot that finished since the last call, if any (Raft thread).

        The file is renamed into place here, in the Raft thread, in the same tick as pysyncobj then
        drops the journal entries it covers: a rename on the worker could be followed by a stop
        before that tick (and at start-up pysyncobj keeps a journal only if it begins exactly at
        the snapshot; ``align_with_snapshot`` covers a crash between the two), or could replace a newer
        snapshot installed from the leader meanwhile, which is discarded instead.
        """
        worker, result = self._worker, self._result
        if worker is None or result is None:
            return None
        worker.join()
        self._worker, self._result = None, None
        if result.error is None and self._installs != self._installs_at_start:
            self._discard(self._writing)
            result = Written(result.index, 0, result.seconds, RuntimeError("a newer snapshot was installed meanwhile"))
        previous = None  # the replaced snapshot, freed gradually (see background_io)
        if result.error is None:
            try:
                previous = self._replace_snapshot(self._writing)
            except OSError as error:
                result = Written(result.index, 0, result.seconds, error)
        self.last = result
        if result.error is None:
            self.written += 1
            _log.info(
                "snapshot at index %d written: %.1f MB in %.2f s",
                result.index,
                result.size / 1e6,
                result.seconds,
            )
            self.drop_transfers()  # transfers restart from the new file
            background_io.free_later(previous)  # nothing reads the old one now
        else:
            self.failed += 1
            self._not_before = time.monotonic() + RETRY_AFTER_FAILURE_S
            _log.error("snapshot at index %d not written: %s", result.index, result.error)
        return result

    # ----------------------------------------------------------------- sending
    def chunk(self, node: Hashable, backlog: int) -> tuple[bytes, bool, bool] | None:
        """The next chunk of the current snapshot for ``node``: (data, first, last); None to send
        nothing now (the connection is still busy, the pace is spent, a transfer would begin while a
        newer snapshot is being written, or there is no snapshot)."""
        if backlog > MAX_BACKLOG or not self._may_stream():
            return None
        source = self._outgoing.get(node)
        first = source is None
        if first and self.busy:
            # The snapshot being written would restart this transfer as it lands (the journal it
            # covers is dropped then, so the older one would leave a gap): wait for it. In the 1 M
            # fault run a re-added voter was sent 43 s of an older file for nothing.
            return None
        if source is None:
            try:
                source = open(self._path, "rb")
            except OSError:
                return None
            self._outgoing[node] = source
            self._sending_since[node] = time.monotonic()
        data = source.read(CHUNK_BYTES)
        self._stream_allowance -= len(data)
        last = not data
        if last:
            self.cancel(node)
        return data, first, last

    def _may_stream(self) -> bool:
        """Whether the token bucket holds a chunk's worth (all transfers share it)."""
        now = time.monotonic()
        elapsed, self._stream_refilled = now - self._stream_refilled, now
        self._stream_allowance = min(float(MAX_BACKLOG), self._stream_allowance + elapsed * STREAM_BYTES_PER_S)
        return self._stream_allowance >= CHUNK_BYTES

    def cancel(self, node: Hashable) -> None:
        """Stop the transfer to ``node`` (pysyncobj: it disconnected)."""
        self._sending_since.pop(node, None)
        source = self._outgoing.pop(node, None)
        if source is not None:
            source.close()

    def drop_transfers(self) -> None:
        """Forget every transfer to a follower (a new snapshot, or this node stopped leading: another
        leader may have started the follower on a different file meanwhile)."""
        for node in list(self._outgoing):
            self.cancel(node)

    # --------------------------------------------------------------- receiving
    def receive(self, chunk: tuple[bytes, bool, bool] | None, applied: int) -> bool:
        """Take one chunk from the leader; True once the whole snapshot is in place.

        A whole snapshot at or below ``applied`` (this node's applied index) is not put in place and
        counts in ``older_refused``: this node already holds that state and more, and installing it
        would clear its journal, acknowledged entries included, unless the journal still held the
        snapshot's last two entries. A leader sends one when a reset its follower sent while it had
        a gap arrives late, after the follower took the re-sent entries and wrote a snapshot of its
        own past the leader's (an audit, session 25: ``tests/test_snapshot_install.py``). Raft
        implementations ignore such a snapshot (etcd's raft: "ignoring snapshot as it is older than
        committed"). Nothing needs answering: pysyncobj's leader moved this node's next index past
        its snapshot as it sent the last chunk, and goes on with AppendEntries from there.

        A chunk that cannot be written (a full disk) abandons the transfer, as pysyncobj's own
        serializer does: later chunks are ignored until the leader starts over, so a file with a gap
        is never installed. A complete file is checked (its members and sizes) before it replaces
        the snapshot this node has. As the chunks arrive, the LMDB file inside is copied into the
        store's next generation (``_extract``), so that the install, which pysyncobj runs in this
        thread right after the last chunk, only opens it."""
        if chunk is None:
            return False
        data, first, last = chunk
        try:
            if first:
                self._abandon_incoming()
                self._incoming = open(self._receiving, "w+b")  # read too: the extraction copies from it
                _log.info("receiving a snapshot from the leader")
            if self._incoming is None:
                return False  # a transfer that began before this node started, or was abandoned
            self._incoming.write(data)
            self._incoming.flush()  # the extraction reads the file by its descriptor
            self._unflushed += len(data)
            # Bounded, as a snapshot write is (snapshot._copy_paced), but by 16 MiB: each fdatasync here
            # holds the Raft thread. Not measured finer for the install.
            if self._unflushed >= snapshot.FLUSH_EVERY:
                os.fdatasync(self._incoming.fileno())
                self._unflushed = 0
            self._extract()
            if not last:
                return False
            os.fsync(self._incoming.fileno())
            self._incoming.close()
            self._incoming = None
            snapshot.check(self._receiving)
            index = snapshot.read_raft_data(self._receiving)[0][1]
            if index <= applied:
                _log.warning(
                    "snapshot at index %d from the leader not installed: this node has applied %d", index, applied
                )
                self._abandon_incoming()
                self.older_refused += 1
                return False
            extracted = self._extraction is not None and self._extraction.finish()
            previous = self._replace_snapshot(self._receiving)
        except (OSError, ValueError) as error:
            _log.error("snapshot from the leader abandoned: %s", error)
            self._abandon_incoming()
            return False
        self._close_extraction()
        self._extracted = extracted
        self.drop_transfers()
        background_io.free_later(previous)
        self._installs += 1
        return True

    def _extract(self) -> None:
        """Copy what has arrived of the LMDB file into the store's next generation (locating it first:
        its header follows the small raft member, so the first chunk holds it)."""
        assert self._incoming is not None
        if self._extraction is None:
            where = snapshot.data_member(self._receiving)
            if where is None:
                return
            _, size = where
            if not self._fits(2 * size):  # the rest of the file, and the copy of its LMDB file beside it
                raise OSError(errno.ENOSPC, f"a {size / 1e6:.0f} MB snapshot and its copy do not fit on this disk")
            self._extraction = snapshot.Extraction(self._store.next_generation_file(), *where)
        self._extraction.advance(self._incoming.fileno(), self._incoming.tell())

    def _close_extraction(self) -> None:
        if self._extraction is not None:
            self._extraction.close()
            self._extraction = None

    def _replace_snapshot(self, source: str) -> str | None:
        """Rename ``source`` over the snapshot, durably; the old snapshot's second name (for
        ``background_io.free_later`` once its transfers are dropped), or None. If the rename fails
        the old file is still in place, so only its second name goes."""
        previous = background_io.link_aside(self._path)
        try:
            os.replace(source, self._path)
            fsync_path(os.path.dirname(os.path.abspath(self._path)))
        except OSError:
            if previous is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(previous)
            raise
        return previous

    def _abandon_incoming(self) -> None:
        if self._incoming is not None:
            with contextlib.suppress(OSError):  # its last write may have failed (a full disk): it goes anyway
                self._incoming.close()
            self._incoming = None
        if self._extraction is not None:
            self._close_extraction()
            self._store.discard_next_generation()
        self._extracted = False
        self._discard(self._receiving)

    def install(self, after: Callable[[], None]) -> Any:
        """Install the snapshot file into the store; ``after`` runs once it is in place."""
        started = time.monotonic()
        installed = self._store.snapshots_installed
        extracted, self._extracted = self._extracted, False
        raft_data = self._store.install_snapshot(self._path, extracted=extracted)
        after()
        if self._store.snapshots_installed != installed:
            _log.info("snapshot at index %d installed in %.2f s", raft_data[0][1], time.monotonic() - started)
        return raft_data

    def close(self) -> None:
        """Wait for a snapshot being written and drop it (the Raft thread has stopped, so the journal
        will not be compacted for it); close open transfers."""
        worker = self._worker
        if worker is not None:
            worker.join()
            self._worker = None
            self._discard(self._writing)
        self.drop_transfers()
        self._abandon_incoming()
