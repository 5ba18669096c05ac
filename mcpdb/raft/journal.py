"""The Raft journal: pysyncobj's journal interface in segment files, with space reserved ahead.

pysyncobj's ``FileJournal`` is one file written through an mmap: on a full disk the write into a
page the file system cannot back kills the process with SIGBUS (measured on a 120 MB tmpfs). Its
file only grows, and compaction rewrites every kept entry at the front, in place: a crash in the
middle loses the tail, and at 1 M contexts the rewrite of the entries appended while a snapshot
was written (hundreds of MB) stopped the Raft thread for seconds. Its term/vote file is written by
temp file and rename, which fails with ENOSPC in the middle of an election. This journal:

- keeps entries in segment files (``raft.journal.d/segment-NNNNNNNN``, each in pysyncobj's record
  format) of about ``SEGMENT_BYTES``; compaction deletes the segments whose entries are all covered
  by the snapshot and records the first index kept, so nothing is ever rewritten and the space of
  compacted entries comes back segment by segment (a crash leaves at most entries that are skipped
  on the next open);
- writes with ``pwrite`` into space ``posix_fallocate`` reserved ahead (``--disk-reserve-bytes``):
  a full disk shows up as a failed reservation, while there is still reserved room to finish what
  is in flight; ``low_space`` is then set and the node raises its disk alarm (``mcpdb.raft.disk``);
- keeps term, vote, commit index and the first kept index in two fixed 256-byte slots of a
  preallocated file (sequence number and CRC each, written alternately, fsynced in durable mode):
  an update never needs new disk space, and a torn write leaves the other slot.

A journal written by pysyncobj or release 0.1 (``raft.journal``) is moved into the first segment
on the first open (made durable, then the old file is emptied; pysyncobj keeps opening that path
itself before mcpdb swaps its journal in, and finds it empty).

Durable mode (``durable=True``): ``sync`` fsyncs the segments written since the last sync; the
transport calls it before a follower acknowledges and at the end of every leader tick (see
``pysyncobj_bridge.McpdbTransport``). pysyncobj kept every entry in memory; this journal keeps
each entry's index, term and place, but only the newest ``CACHE_BYTES`` of commands: older ones
(what a follower far behind asks for, or a restart replays) are read back from their segment, so
the heap does not grow with the journal (at 1 M contexts, entries appended during one snapshot
were hundreds of MB).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mcpdb.fsutil import fsync_path
from mcpdb.store import background_io

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's shape
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # the errors that mean "the disk is full" here
RECORD_OVERHEAD = 24  # bytes a record adds to its command: two lengths, index and term
SEGMENT_BYTES = 64 << 20
CACHE_BYTES = 32 << 20  # commands kept in memory, the newest: a leader sends the tail, applies it
_APP_NAME = b"PYSYNCOBJ"
_NAME_SIZE = 24
_VERSION_SIZE = 8
_FORMAT_VERSION = 1
_LAST_RECORD_OFFSET_AT = _NAME_SIZE + _VERSION_SIZE + 4
_FIRST_RECORD_OFFSET = _LAST_RECORD_OFFSET_AT + 4
_U32 = struct.Struct("<I")
_INDEX_TERM = struct.Struct("<QQ")
_COMMAND_AT = _U32.size + _INDEX_TERM.size  # a command's offset in its record (after length, index, term)
_MAX_FILE = (1 << 32) - 1  # the format stores the end offset in 32 bits
_SEGMENT_NAME = "segment-{:08d}"

_META_MAGIC = b"MCPDBMT1"
_SLOT = 256
_SLOT_HEAD = struct.Struct("<8sQII")  # magic, sequence, payload length, CRC32 of the payload
_PICKLE_PROTO = b"\x80"  # first byte of pysyncobj's pickled meta file


class JournalFull(OSError):
    """The journal has no reserved room left for an entry (the disk is full)."""

    def __init__(self, needed: int, room: int) -> None:
        super().__init__(errno.ENOSPC, f"no disk space for a {needed}-byte journal entry ({room} bytes reserved)")


class JournalSyncFailed(OSError):
    """An fsync of the journal, or the write of its term and vote, failed. After a failed fsync Linux
    may have dropped the dirty pages and reports the error once: a retry that succeeds proves
    nothing, so the node must stop."""


def _header(app_version: bytes) -> bytes:
    name = _APP_NAME + b"\0" * (_NAME_SIZE - len(_APP_NAME))
    version = app_version[:_VERSION_SIZE] + b"\0" * (_VERSION_SIZE - len(app_version[:_VERSION_SIZE]))
    return name + version + struct.pack("<II", _FORMAT_VERSION, _FIRST_RECORD_OFFSET)


def _record(entry: Entry) -> bytes:
    command, index, term = entry
    body = _INDEX_TERM.pack(index, term) + command
    size = _U32.pack(len(body))
    return size + body + size  # RECORD_OVERHEAD + len(command) bytes


def _read_records(fd: int) -> tuple[list[tuple[Entry, int]], int]:
    """The (entry, offset) pairs of one file in pysyncobj's format, and its end offset."""
    if os.fstat(fd).st_size < _FIRST_RECORD_OFFSET:
        return [], _FIRST_RECORD_OFFSET
    (end,) = _U32.unpack(os.pread(fd, 4, _LAST_RECORD_OFFSET_AT))
    data = os.pread(fd, end - _FIRST_RECORD_OFFSET, _FIRST_RECORD_OFFSET)
    found, position = [], 0
    while position < len(data):
        (length,) = _U32.unpack_from(data, position)
        index, term = _INDEX_TERM.unpack_from(data, position + _U32.size)
        command = bytes(data[position + _COMMAND_AT : position + _U32.size + length])
        found.append(((command, index, term), _FIRST_RECORD_OFFSET + position))
        position += length + 8
    return found, end


@dataclass(eq=False)
class _Segment:
    path: str
    fd: int
    end: int
    allocated: int
    dirty: bool = False


class Journal:
    """pysyncobj's journal interface (``add``, ``clear``, ``deleteEntriesFrom``/``To``, term and vote,
    commit index), one writer: the Raft thread."""

    def __init__(
        self,
        path: str,
        app_version: bytes,
        durable: bool,
        reserve: int,
        segment_bytes: int = SEGMENT_BYTES,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self._directory = path + ".d"
        self._app_version = app_version
        self._durable = durable
        self._reserve_bytes = reserve
        self._segment_bytes = segment_bytes
        self._meta = _MetaSlots(path + ".meta", durable)
        if not os.path.isdir(self._directory):
            self._migrate(path)
        background_io.delete_leftover_trash(self._directory)
        self._cache_bytes = cache_bytes
        self._index_terms: list[tuple[int, int, int]] = []  # (index, term, command length) of each entry
        self._commands: list[bytes | None] = []  # None before ``_cached_from``: read back when asked
        self._cached_from = 0
        self._cached = 0  # bytes of commands held
        self._places: list[_Segment] = []  # the segment of each entry
        self._offsets: list[int] = []  # each entry's record offset in its segment
        self._segments: list[_Segment] = []
        self.bytes = 0  # of kept entries' records, for size-triggered compaction
        self.syncs = 0
        self.low_space = False  # a reservation failed: the disk is (nearly) full
        self._load()
        self._reserve()

    # ------------------------------------------------------------ segments
    def _segment_numbers(self) -> list[int]:
        names = (name for name in os.listdir(self._directory) if name.startswith("segment-"))
        return sorted(int(name.split("-", 1)[1]) for name in names)

    def _load(self) -> None:
        numbers = self._segment_numbers() or [1]
        for number in numbers:
            segment = self._open_segment(number)
            found, segment.end = _read_records(segment.fd)
            # Only space this journal reserved itself counts (the tail may be sparse).
            segment.allocated = segment.end
            for entry, offset in found:
                if entry[1] < self._meta.first_index:
                    continue  # compacted: a snapshot covers it
                self._append_place(entry, segment, offset)

    def _open_segment(self, number: int) -> _Segment:
        path = os.path.join(self._directory, _SEGMENT_NAME.format(number))
        created = not os.path.exists(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        segment = _Segment(path, fd, _FIRST_RECORD_OFFSET, _FIRST_RECORD_OFFSET)
        if created:
            try:
                os.pwrite(fd, _header(self._app_version), 0)
            except OSError:
                os.close(fd)
                raise
            segment.dirty = True
            if self._durable:
                fsync_path(self._directory)
        self._segments.append(segment)
        return segment

    def _migrate(self, legacy: str) -> None:
        """Move a single-file journal (pysyncobj's, release 0.1's) into the first segment."""
        building = self._directory + ".new"
        shutil.rmtree(building, ignore_errors=True)
        os.makedirs(building)
        records = b""
        if os.path.exists(legacy):
            fd = os.open(legacy, os.O_RDONLY)
            try:
                (end,) = _U32.unpack(os.pread(fd, 4, _LAST_RECORD_OFFSET_AT)) if os.fstat(fd).st_size else (0,)
                if end > _FIRST_RECORD_OFFSET:
                    records = os.pread(fd, end - _FIRST_RECORD_OFFSET, _FIRST_RECORD_OFFSET)
            finally:
                os.close(fd)
        segment = os.path.join(building, _SEGMENT_NAME.format(1))
        with open(segment, "wb") as out:
            out.write(_header(self._app_version))
            out.write(records)
            out.flush()
            os.pwrite(out.fileno(), _U32.pack(_FIRST_RECORD_OFFSET + len(records)), _LAST_RECORD_OFFSET_AT)
            os.fsync(out.fileno())
        fsync_path(building)
        os.replace(building, self._directory)
        fsync_path(os.path.dirname(os.path.abspath(self._directory)))
        if os.path.exists(legacy):
            with open(legacy, "r+b") as old:  # emptied: its entries live in the segment now
                old.truncate(_FIRST_RECORD_OFFSET)
                old.seek(_LAST_RECORD_OFFSET_AT)
                old.write(_U32.pack(_FIRST_RECORD_OFFSET))

    def _append_place(self, entry: Entry, segment: _Segment, offset: int) -> None:
        command, index, term = entry
        self._index_terms.append((index, term, len(command)))
        self._commands.append(command)
        self._places.append(segment)
        self._offsets.append(offset)
        self.bytes += len(command) + RECORD_OVERHEAD
        self._cached += len(command)
        while self._cached > self._cache_bytes and self._cached_from < len(self._commands):
            self._cached -= self._index_terms[self._cached_from][2]
            self._commands[self._cached_from] = None
            self._cached_from += 1

    def _forget(self, start: int, stop: int) -> None:
        for position in range(start, stop):
            length = self._index_terms[position][2]
            self.bytes -= length + RECORD_OVERHEAD
            if position >= self._cached_from:
                self._cached -= length
        self._cached_from -= max(0, min(stop, self._cached_from) - start)
        del self._index_terms[start:stop]
        del self._commands[start:stop]
        del self._places[start:stop]
        del self._offsets[start:stop]
        self._cached_from = min(self._cached_from, len(self._commands))

    def _entry(self, position: int) -> Entry:
        index, term, length = self._index_terms[position]
        command = self._commands[position]
        if command is None:  # past the cache: read back (records are never rewritten in place)
            command = os.pread(self._places[position].fd, length, self._offsets[position] + _COMMAND_AT)
        return command, index, term

    def _drop_segment(self, segment: _Segment) -> None:
        os.close(segment.fd)
        background_io.retire(segment.path)  # renamed now (no longer a segment), freed off this thread
        self._segments.remove(segment)

    @property
    def _active(self) -> _Segment:
        return self._segments[-1]

    def _roll(self) -> None:
        """Start a new segment, if the disk lets it have its reservation."""
        number = int(os.path.basename(self._active.path).split("-", 1)[1]) + 1
        try:
            segment = self._open_segment(number)
        except OSError as error:
            if error.errno not in NO_SPACE:
                raise
            self.low_space = True  # the file could not even take its header: keep the current one
            os.unlink(os.path.join(self._directory, _SEGMENT_NAME.format(number)))
            return
        if not self._reserve():
            self._drop_segment(segment)

    def _set_end(self, segment: _Segment, end: int) -> None:
        segment.end = end
        os.pwrite(segment.fd, _U32.pack(end), _LAST_RECORD_OFFSET_AT)
        segment.dirty = True

    def _reserve(self, needed: int = 0) -> bool:
        """Keep the reserve allocated past the active segment's end (and ``needed`` at least); False
        if the disk refused (``low_space`` is set; the room already reserved stays usable)."""
        segment = self._active
        if segment.end + needed > _MAX_FILE:
            self.low_space = True  # the format's 32-bit end offset
            return False
        want = min(segment.end + needed + self._reserve_bytes, _MAX_FILE)
        if segment.allocated >= want - self._reserve_bytes // 2 and segment.allocated >= segment.end + needed:
            self.low_space = False
            return True
        try:
            os.posix_fallocate(segment.fd, segment.allocated, want - segment.allocated)
        except OSError as error:
            if error.errno not in NO_SPACE:
                raise
            # Whatever part a failed fallocate left is not counted: only what it reported.
            self.low_space = True
            return False
        segment.allocated = want
        self.low_space = False
        return True

    def retry_reserve(self) -> bool:
        """Try the reservation again (the disk alarm's periodic check); True once it holds."""
        return self._reserve()

    def make_room(self, needed: int) -> bool:
        """Whether entries of ``needed`` bytes (records included) can be written now, reserving
        space for them if it can; the transport asks before it lets pysyncobj append a leader's
        entries, so an append never fails half way."""
        return self._reserve(needed) or self.room >= needed

    @property
    def room(self) -> int:
        """Bytes of entries that can still be written without new disk space."""
        return self._active.allocated - self._active.end

    def slice_end(self, first: int, last: int, budget: int) -> int:
        """The last index from ``first`` through ``last`` whose commands together take at most
        ``budget`` bytes (``first`` counts whatever its size); ``last`` if ``first`` is not held."""
        if last < first or not self._index_terms or not self._index_terms[0][0] <= first <= self._index_terms[-1][0]:
            return last
        position = first - self._index_terms[0][0]
        end = min(last, self._index_terms[-1][0])
        total = self._index_terms[position][2]
        index = first
        while index < end:
            total += self._index_terms[position + index + 1 - first][2]
            if total > budget:
                break
            index += 1
        return index

    def reaches(self, first: int, last: int, threshold: int) -> bool:
        """Whether the commands from ``first`` through ``last`` held here take ``threshold`` bytes or more."""
        if not self._index_terms or last < first:
            return False
        start = max(first, self._index_terms[0][0]) - self._index_terms[0][0]
        stop = min(last, self._index_terms[-1][0]) - self._index_terms[0][0]
        total = 0
        for position in range(start, stop + 1):
            total += self._index_terms[position][2]
            if total >= threshold:
                return True
        return False

    # ---------------------------------------------------- pysyncobj's interface
    def add(self, command: bytes, idx: int, term: int) -> None:
        record = _record((command, idx, term))
        if self._active.end + len(record) > self._segment_bytes and self._active.end > _FIRST_RECORD_OFFSET:
            self._roll()
        if not self.make_room(len(record)):
            raise JournalFull(len(record), self.room)
        segment = self._active
        os.pwrite(segment.fd, record, segment.end)
        self._append_place((command, idx, term), segment, segment.end)
        self._set_end(segment, segment.end + len(record))

    def clear(self) -> None:
        """Drop every entry (pysyncobj installs a snapshot from the leader, then adds its last two).

        The active segment is truncated to its header, in place, and its space reserved again: the
        blocks it frees serve the two entries pysyncobj adds next, whatever the disk has left. Dropped
        into a new segment, those entries needed new space while the old segments were still being
        freed (gradually, off this thread): on a full disk the first add raised ``JournalFull``
        inside pysyncobj's install, which logs and goes on, and the node was left with an empty
        journal, every later message raising, until a restart (an audit, session 25:
        ``tests/test_snapshot_install.py``). Truncated, not rewritten over: no old record is left
        under the new end for a torn write to bring back."""
        active = self._active
        self._forget(0, len(self._index_terms))
        self._meta.first_index = 0
        self._meta.store()
        for segment in self._segments[:-1]:
            self._drop_segment(segment)
        os.ftruncate(active.fd, 0)
        os.pwrite(active.fd, _header(self._app_version), 0)
        active.allocated = 0
        self._set_end(active, _FIRST_RECORD_OFFSET)
        if self._durable:
            fsync_path(self._directory)  # the dropped segments' renames, as a new segment's creation did
        self._reserve()

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803 - pysyncobj's names
        """Drop the entries from position ``entryFrom`` on (a conflict with the leader's log)."""
        if entryFrom >= len(self._index_terms):
            return
        segment, offset = self._places[entryFrom], self._offsets[entryFrom]
        self._forget(entryFrom, len(self._index_terms))
        later = self._segments[self._segments.index(segment) + 1 :]
        for dropped in later:
            self._drop_segment(dropped)
        if later and self._durable:
            fsync_path(self._directory)
        self._set_end(segment, offset)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802,N803 - pysyncobj's names
        """Drop the entries before position ``entryTo`` (a snapshot covers them): record the first
        index kept, then delete the segments holding only dropped entries. Nothing is rewritten;
        dropped entries left in the first segment are skipped on the next open. The snapshot's own
        rename was made durable before (``Snapshotter.finished``)."""
        kept = self._index_terms
        if entryTo <= 0 or not kept:
            return
        entryTo = min(entryTo, len(kept))
        first_index = kept[entryTo][0] if entryTo < len(kept) else kept[-1][0] + 1
        self._forget(0, entryTo)
        self._meta.first_index = first_index
        self._meta.store()
        keep_from = self._places[0] if self._places else self._active
        for segment in self._segments[: self._segments.index(keep_from)]:
            self._drop_segment(segment)

    def command_head(self, index: int, size: int) -> bytes | None:
        """The first ``size`` bytes of the command at Raft index ``index``, None if this journal does not
        hold it; read back only that far when the command is past the cache (a bulk entry is half a
        megabyte)."""
        if not self._index_terms:
            return None
        position = index - self._index_terms[0][0]
        if not 0 <= position < len(self._index_terms):
            return None
        command = self._commands[position]
        if command is not None:
            return command[:size]
        length = min(size, self._index_terms[position][2])
        return os.pread(self._places[position].fd, length, self._offsets[position] + _COMMAND_AT)

    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            return [self._entry(position) for position in range(*item.indices(len(self._index_terms)))]
        if item < 0:
            item += len(self._index_terms)
        if not 0 <= item < len(self._index_terms):
            raise IndexError("journal index out of range")
        return self._entry(item)

    def __len__(self) -> int:
        return len(self._index_terms)

    def __iter__(self) -> Iterator[Entry]:
        return (self._entry(position) for position in range(len(self._index_terms)))

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        self._meta.commit_index = raftCommitIndex  # volatile in Raft: stored with the next term change or tick

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._meta.commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:  # noqa: N802,N803
        """Raft requires term and vote on disk before any message reflecting them is sent."""
        self._meta.term, self._meta.voted_for = term, votedForNodeId
        self._meta.store()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._meta.term

    def getVotedForNodeId(self) -> Any:  # noqa: N802
        return self._meta.voted_for

    def onOneSecondTimer(self) -> None:  # noqa: N802
        self._meta.store_if_changed()

    def sync(self) -> None:
        """fsync the segments written since the last sync (durable mode). Raises the term and vote's
        failed write again: pysyncobj swallows an exception in some of its paths (a snapshot's
        install), and the Raft thread calls this at every tick's start, where it stops the node."""
        if self._meta.failed is not None:
            raise self._meta.failed
        for segment in self._segments:
            if segment.dirty:
                if self._durable:
                    try:
                        os.fsync(segment.fd)
                    except OSError as error:
                        raise JournalSyncFailed(error.errno, f"fsync of the Raft journal failed: {error}") from error
                    self.syncs += 1
                segment.dirty = False

    def _destroy(self) -> None:
        for segment in self._segments:
            if segment.dirty:
                os.fsync(segment.fd)
            os.close(segment.fd)
        self._meta.store_if_changed()
        self._meta.close()


class _MetaSlots:
    """Term, vote and commit index in two alternating fixed slots of a preallocated file.

    Reads pysyncobj's own meta file (a pickle, replaced by temp file and rename) the first time, so
    an existing node keeps its term and vote across the upgrade.
    """

    def __init__(self, path: str, durable: bool) -> None:
        self._durable = durable
        self.failed: JournalSyncFailed | None = None  # raised again by every Journal.sync once set
        self.term = 0
        self.voted_for: Any = None
        self.commit_index = 1
        self.first_index = 0  # entries below it were compacted away (see Journal.deleteEntriesTo)
        self._sequence = 0
        self._stored: tuple[Any, ...] = (0, None, 1, 0)
        legacy = self._read(path)
        created = not os.path.exists(path)
        if legacy is not None:
            # pysyncobj's format: write ours beside it, then rename over it, so a crash leaves one
            # of the two whole (never a file with neither term nor vote).
            self.term = int(legacy.get("currentTerm", 0))
            self.voted_for = legacy.get("votedForNodeId")
            self.commit_index = int(legacy.get("raftCommitIndex", 1))
            self._fd = os.open(path + ".new", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.posix_fallocate(self._fd, 0, 2 * _SLOT)
            self._durable = True  # the migration itself is always made durable
            self.store()
            self._durable = durable
            os.replace(path + ".new", path)
            fsync_path(os.path.dirname(os.path.abspath(path)))
            return
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.posix_fallocate(self._fd, 0, 2 * _SLOT)
        if created and durable:
            fsync_path(os.path.dirname(os.path.abspath(path)))

    def _read(self, path: str) -> dict[str, Any] | None:
        """Load the newest valid slot; returns pysyncobj's legacy meta if the file is in its format."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        if raw[:1] == _PICKLE_PROTO:
            try:
                legacy = pickle.loads(raw)
            except Exception:  # noqa: BLE001 - pysyncobj too starts from empty meta when its file is unreadable
                return {}
            return legacy if isinstance(legacy, dict) else {}
        best: tuple[int, dict[str, Any]] | None = None
        for slot in (0, 1):
            head = raw[slot * _SLOT : slot * _SLOT + _SLOT_HEAD.size]
            if len(head) < _SLOT_HEAD.size:
                continue
            magic, sequence, length, crc = _SLOT_HEAD.unpack(head)
            payload = raw[slot * _SLOT + _SLOT_HEAD.size : slot * _SLOT + _SLOT_HEAD.size + length]
            if magic != _META_MAGIC or zlib.crc32(payload) != crc:
                continue
            if best is None or sequence > best[0]:
                best = (sequence, json.loads(payload))
        if best is not None:
            self._sequence, values = best
            self.term, self.voted_for, self.commit_index = values["term"], values["voted_for"], values["commit"]
            self.first_index = values.get("first", 0)
            self._stored = self._values()
        return None

    def store(self) -> None:
        payload = json.dumps(
            {"term": self.term, "voted_for": self.voted_for, "commit": self.commit_index, "first": self.first_index}
        ).encode()
        if _SLOT_HEAD.size + len(payload) > _SLOT:
            raise ValueError(f"Raft meta of {len(payload)} bytes does not fit a {_SLOT}-byte slot")
        self._sequence += 1
        slot = self._sequence % 2
        head = _SLOT_HEAD.pack(_META_MAGIC, self._sequence, len(payload), zlib.crc32(payload))
        try:
            os.pwrite(self._fd, (head + payload).ljust(_SLOT, b"\0"), slot * _SLOT)
            if self._durable:
                os.fsync(self._fd)
        except OSError as error:
            # pysyncobj holds the new term and vote in memory already: going on, a node could act in
            # (or vote again in, after a restart) a term its disk never recorded (found by an audit).
            self.failed = JournalSyncFailed(error.errno, f"storing the Raft term and vote failed: {error}")
            raise self.failed from error
        self._stored = self._values()

    def _values(self) -> tuple[Any, ...]:
        return (self.term, self.voted_for, self.commit_index, self.first_index)

    def store_if_changed(self) -> None:
        if self._values() != self._stored:
            self.store()

    def close(self) -> None:
        os.close(self._fd)
