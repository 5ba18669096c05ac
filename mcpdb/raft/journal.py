"""The Raft journal: pysyncobj's journal interface on plain file writes, with space reserved ahead.

pysyncobj's ``FileJournal`` writes through an mmap: on a full disk the write into a page the file
system cannot back kills the process with SIGBUS (measured on a 120 MB tmpfs). Its file only grows
(compaction rewrites the kept entries at the front, in place, so a crash in the middle of it
loses the tail), and its term/vote file is written by temp file and rename, which fails with
ENOSPC in the middle of an election. This journal keeps the same file format (a journal written by
pysyncobj or by release 0.1 opens as is) and:

- writes with ``pwrite`` into space ``posix_fallocate`` reserved ahead (``--disk-reserve-bytes``): a
  full disk shows up as a failed reservation, while there is still reserved room to finish what is in
  flight; ``low_space`` is then set and the node raises its disk alarm (``mcpdb.raft.disk``);
- compacts by writing the kept entries to a new file, fsynced, renamed over the old one: the disk
  space of the dropped entries is returned at once, and a crash leaves the old or the new journal;
- keeps term, vote and commit index in two fixed 256-byte slots of a preallocated file (sequence
  number and CRC each, written alternately, fsynced in durable mode): an update never needs new
  disk space, and a torn write leaves the other slot.

Durable mode (``durable=True``): ``sync`` fsyncs the file if it changed since the last sync; the
transport calls it before a follower acknowledges and at the end of every leader tick (see
``pysyncobj_bridge.McpdbTransport``). Entries also stay in memory, as in pysyncobj; compaction
bounds them by entries, seconds and bytes (``RaftSettings``).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from mcpdb.fsutil import fsync_path

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's shape
RECORD_OVERHEAD = 24  # bytes a record adds to its command: two lengths, index and term

_APP_NAME = b"PYSYNCOBJ"
_NAME_SIZE = 24
_VERSION_SIZE = 8
_FORMAT_VERSION = 1
_LAST_RECORD_OFFSET_AT = _NAME_SIZE + _VERSION_SIZE + 4
_FIRST_RECORD_OFFSET = _LAST_RECORD_OFFSET_AT + 4
_U32 = struct.Struct("<I")
_INDEX_TERM = struct.Struct("<QQ")
_MAX_FILE = (1 << 32) - 1  # the format stores the end offset in 32 bits

_META_MAGIC = b"MCPDBMT1"
_SLOT = 256
_SLOT_HEAD = struct.Struct("<8sQII")  # magic, sequence, payload length, CRC32 of the payload
_PICKLE_PROTO = b"\x80"  # first byte of pysyncobj's pickled meta file


class JournalFull(OSError):
    """The journal has no reserved room left for an entry (the disk is full)."""

    def __init__(self, needed: int, room: int) -> None:
        super().__init__(errno.ENOSPC, f"no disk space for a {needed}-byte journal entry ({room} bytes reserved)")


def _header(app_version: bytes) -> bytes:
    name = _APP_NAME + b"\0" * (_NAME_SIZE - len(_APP_NAME))
    version = app_version[:_VERSION_SIZE] + b"\0" * (_VERSION_SIZE - len(app_version[:_VERSION_SIZE]))
    return name + version + struct.pack("<II", _FORMAT_VERSION, _FIRST_RECORD_OFFSET)


def _record(entry: Entry) -> bytes:
    command, index, term = entry
    body = _INDEX_TERM.pack(index, term) + command
    size = _U32.pack(len(body))
    return size + body + size  # RECORD_OVERHEAD + len(command) bytes


class Journal:
    """pysyncobj's journal interface (``add``, ``clear``, ``deleteEntriesFrom``/``To``, term and vote,
    commit index), one writer: the Raft thread."""

    def __init__(self, path: str, app_version: bytes, durable: bool, reserve: int) -> None:
        self._path = path
        self._reserve_bytes = reserve
        self._app_version = app_version
        self._durable = durable
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # start of each entry's record
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._end = _FIRST_RECORD_OFFSET
        self._load()
        # What lies past the end may be sparse (pysyncobj grew its file with ftruncate): only
        # space this journal reserved itself counts.
        self._allocated = self._end
        self._dirty = False
        self.bytes = self._end - _FIRST_RECORD_OFFSET  # of entries on disk, for size-triggered compaction
        self.syncs = 0
        self.low_space = False  # a reservation failed: the disk is (nearly) full
        self._meta = _MetaSlots(path + ".meta", durable)
        self._reserve()

    # ------------------------------------------------------------------ file
    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        if size < _FIRST_RECORD_OFFSET:
            os.pwrite(self._fd, _header(self._app_version), 0)
            return
        (end,) = _U32.unpack(os.pread(self._fd, 4, _LAST_RECORD_OFFSET_AT))
        data = os.pread(self._fd, end - _FIRST_RECORD_OFFSET, _FIRST_RECORD_OFFSET)
        position = 0
        while position < len(data):
            (length,) = _U32.unpack_from(data, position)
            index, term = _INDEX_TERM.unpack_from(data, position + 4)
            self._offsets.append(_FIRST_RECORD_OFFSET + position)
            self._entries.append((bytes(data[position + 4 + 16 : position + 4 + length]), index, term))
            position += length + 8
        self._end = end

    def _reserve(self, needed: int = 0) -> bool:
        """Keep the reserve allocated past the end (and ``needed`` at least); False if the disk
        refused (``low_space`` is set; the room already reserved stays usable)."""
        if self._end + needed > _MAX_FILE:
            self.low_space = True  # the format's 32-bit end offset: only compaction makes room
            return False
        want = min(self._end + needed + self._reserve_bytes, _MAX_FILE)
        if self._allocated >= want - self._reserve_bytes // 2 and self._allocated >= self._end + needed:
            self.low_space = False
            return True
        try:
            os.posix_fallocate(self._fd, self._allocated, want - self._allocated)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Whatever part a failed fallocate left is not counted: only what it reported.
            self.low_space = True
            return False
        self._allocated = want
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
        return self._allocated - self._end

    def _write(self, data: bytes, offset: int) -> None:
        os.pwrite(self._fd, data, offset)
        self._dirty = True

    def _set_end(self, end: int) -> None:
        self._end = end
        self._write(_U32.pack(end), _LAST_RECORD_OFFSET_AT)
        self.bytes = end - _FIRST_RECORD_OFFSET

    # ---------------------------------------------------- pysyncobj's interface
    def add(self, command: bytes, idx: int, term: int) -> None:
        record = _record((command, idx, term))
        if not self.make_room(len(record)):
            raise JournalFull(len(record), self.room)
        self._write(record, self._end)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._set_end(self._end + len(record))

    def clear(self) -> None:
        self._entries, self._offsets = [], []
        self._set_end(_FIRST_RECORD_OFFSET)

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803 - pysyncobj's names
        if entryFrom >= len(self._entries):
            return
        end = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._set_end(end)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802,N803 - pysyncobj's names
        """Drop the entries before position ``entryTo`` (a snapshot covers them) by writing the rest
        to a new file and renaming it over this one: the space comes back, and a crash leaves either
        journal whole. The snapshot's own rename was made durable before (``Snapshotter``)."""
        kept = self._entries[entryTo:]
        records = [_record(entry) for entry in kept]
        tmp = self._path + ".compacting"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            body = b"".join(records)
            os.pwrite(fd, _header(self._app_version), 0)
            os.pwrite(fd, body, _FIRST_RECORD_OFFSET)
            end = _FIRST_RECORD_OFFSET + len(body)
            os.pwrite(fd, _U32.pack(end), _LAST_RECORD_OFFSET_AT)
            os.fsync(fd)
            os.replace(tmp, self._path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        # The new file is the journal from here on, whatever happens to the directory fsync.
        os.close(self._fd)
        self._fd = fd
        self._entries = kept
        self._offsets = []
        offset = _FIRST_RECORD_OFFSET
        for record in records:
            self._offsets.append(offset)
            offset += len(record)
        self._end = end
        self.bytes = end - _FIRST_RECORD_OFFSET
        self._allocated = os.fstat(fd).st_size
        self._dirty = False
        fsync_path(os.path.dirname(os.path.abspath(self._path)))
        self._reserve()

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

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

    def flush(self) -> None:
        self.sync()

    def sync(self) -> None:
        """fsync the journal if anything was written since the last sync (durable mode)."""
        if self._dirty and self._durable:
            os.fsync(self._fd)
            self.syncs += 1
        self._dirty = False

    def _destroy(self) -> None:
        if self._dirty:
            os.fsync(self._fd)
        os.close(self._fd)
        self._meta.store_if_changed()
        self._meta.close()


class _MetaSlots:
    """Term, vote and commit index in two alternating fixed slots of a preallocated file.

    Reads pysyncobj's own meta file (a pickle, replaced by temp file and rename) the first time, so
    an existing node keeps its term and vote across the upgrade.
    """

    def __init__(self, path: str, durable: bool) -> None:
        self._durable = durable
        self.term = 0
        self.voted_for: Any = None
        self.commit_index = 1
        self._sequence = 0
        self._stored = (0, None, 1)
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
            self._stored = (self.term, self.voted_for, self.commit_index)
        return None

    def store(self) -> None:
        payload = json.dumps({"term": self.term, "voted_for": self.voted_for, "commit": self.commit_index}).encode()
        if _SLOT_HEAD.size + len(payload) > _SLOT:
            raise ValueError(f"Raft meta of {len(payload)} bytes does not fit a {_SLOT}-byte slot")
        self._sequence += 1
        slot = self._sequence % 2
        head = _SLOT_HEAD.pack(_META_MAGIC, self._sequence, len(payload), zlib.crc32(payload))
        os.pwrite(self._fd, (head + payload).ljust(_SLOT, b"\0"), slot * _SLOT)
        if self._durable:
            os.fsync(self._fd)
        self._stored = (self.term, self.voted_for, self.commit_index)

    def store_if_changed(self) -> None:
        if (self.term, self.voted_for, self.commit_index) != self._stored:
            self.store()

    def close(self) -> None:
        os.close(self._fd)
