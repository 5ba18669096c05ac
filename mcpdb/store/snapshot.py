"""Snapshot files: pysyncobj's bookkeeping and a compacted LMDB copy of one pinned version, in one tar.

A snapshot is written from a ``PinnedVersion``: a read transaction the Raft thread began right after
committing everything it applied, so the copy is exactly the state at the snapshot's index however
long the copy takes and whatever commits meanwhile (LMDB is MVCC; a read transaction may move to
another thread, py-lmdb opens every environment with ``MDB_NOTLS``). That is what lets the copy run
on a thread of its own while the Raft thread keeps heartbeating and applying (``write`` is the part
that runs there).

The file is a plain tar (release 0.1 wrote and reads the same members): ``raft.pickle`` then
``data.mdb``. LMDB streams the compacted copy into the tar through a pipe (``copyfd``) that the
kernel splices into the file, paced and flushed as it goes (``_copy_paced`` says why), so a snapshot
needs its own size of disk once, not twice (copy, then tar of the copy); the data member's header
is written last, when its size is known. Reading
one back streams the member out with ``copy_file_range`` (the kernel copies, nothing passes
through the heap), flushed as it goes too.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pickle
import re
import tarfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import lmdb

# py-lmdb from 2.0 makes a write transaction's abort wait for every LMDB call of the environment in
# flight with the GIL released, the copy below included: the Raft thread refusing one command (a
# CAS conflict rolls back its child transaction) waited for the whole copy, 57 s at 1 M contexts.
LMDB_BELOW = (2,)
RAFT_MEMBER = "raft.pickle"
DATA_MEMBER = "data.mdb"
_BLOCK = tarfile.BLOCKSIZE
_COPY_CHUNK = 8 << 20  # per copy_file_range call
FLUSH_EVERY = 16 << 20  # bytes a snapshot install (a follower's, in its Raft thread) leaves unflushed at most
# Bytes a snapshot write leaves unflushed at most (see _copy_paced); its own thread does the flushing.
WRITE_FLUSH_EVERY = 1 << 20
_PIPE_CHUNK = 1 << 20
WRITE_BYTES_PER_S = 200e6  # a snapshot's write rate at most: the journal's fsyncs share the disk


@dataclass
class PinnedVersion:
    """A read transaction on one environment, at applied index ``index``; ``write`` ends it."""

    env: lmdb.Environment
    txn: lmdb.Transaction
    index: int


def check_lmdb_version() -> None:
    """Refuse a py-lmdb whose aborts wait for a snapshot's copy (see ``LMDB_BELOW``)."""
    major = re.match(r"\d+", lmdb.__version__)
    if major is None or (int(major.group()),) >= LMDB_BELOW:
        raise RuntimeError(
            f"mcpdb requires lmdb<{LMDB_BELOW[0]} (found {lmdb.__version__}): from 2.0 a write transaction's "
            "abort waits for a snapshot's copy, which stalls the Raft thread for the whole copy"
        )


def _pad(out: io.BufferedWriter, size: int) -> None:
    remainder = size % _BLOCK
    if remainder:
        out.write(b"\0" * (_BLOCK - remainder))


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    # GNU format: sizes past 8 GiB are stored base-256 in the same 512-byte header.
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _copy_paced(pinned: PinnedVersion, fd: int) -> None:
    """LMDB's compacted copy of ``pinned``, appended to ``fd`` at most ``WRITE_BYTES_PER_S`` and
    flushed every ``WRITE_FLUSH_EVERY`` bytes.

    Written straight to the file, a multi-GB copy left gigabytes of dirty pages, and every journal
    fsync of the node (one per tick in durable mode) then waited behind their writeback: measured
    at 1 M contexts, probe writes stalled for seconds and heartbeats stopped long enough for
    elections. So LMDB writes into a pipe (``mdb_copy`` streams to stdout the same way) and this
    thread moves it to the file in chunks, with an ``fdatasync`` every MiB. The flushes are that
    frequent because the journal's fsyncs on the same disk still waited for the snapshot's
    unflushed data, in proportion to how much there was (measured on ext4, data=ordered, Linux
    6.18; which ext4 wait it is, ordered data or a journal commit behind the idle-class writes, was
    not traced). With every node writing a snapshot at once under a probe (300 k contexts), probe
    p50 / p99 were 36 / 198 ms flushing every 16 MiB, 8.6 / 58 every 4, 3.8 / 28-31 every 1 (3.2 /
    20 with no snapshot), the snapshots as fast (6.6-7.2 s). ``sync_file_range`` every MiB (writes
    the data, commits no metadata, flushes no device cache) was worse: 18.7 / 93.

    The pipe goes to the file with ``splice``, not ``read`` and ``write``: the bytes never come up
    into Python, which halved a snapshot's CPU (three 2 GB copies at once on two cores, a scratch
    script, the same pacing: 5.2 s of system time each with ``read`` and ``write``, 2.2-2.4 s
    spliced). That CPU slowed every other thread of the machine while all three nodes wrote theirs.
    The pipe is widened to ``_PIPE_CHUNK`` where the kernel allows, so a splice moves a MiB, not 64 KiB.
    """
    reader, writer = os.pipe()
    with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size for this user: 64 KiB a call
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, _PIPE_CHUNK)
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            pinned.env.copyfd(writer, compact=True, txn=pinned.txn)
        except BaseException as error:  # noqa: BLE001 - re-raised by the consumer
            failure.append(error)
        finally:
            os.close(writer)

    producer = threading.Thread(target=produce, name="snapshot-copy", daemon=True)
    producer.start()
    started, moved, unflushed = time.monotonic(), 0, 0
    try:
        while spliced := os.splice(reader, fd, _PIPE_CHUNK):  # at the file's position, advancing it
            moved += spliced
            unflushed += spliced
            if unflushed >= WRITE_FLUSH_EVERY:
                os.fdatasync(fd)
                unflushed = 0
                ahead = moved / WRITE_BYTES_PER_S - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        os.close(reader)
        producer.join()
    if failure:
        raise failure[0]


def write(path: str, pinned: PinnedVersion, raft_data: Any) -> int:
    """Write the snapshot of ``pinned`` to ``path`` (fsynced) and end the read transaction.

    Returns the file's size. Any thread: it only reads the pinned version.
    """
    try:
        raft_bytes = pickle.dumps(raft_data)
        with open(path, "wb") as out:
            out.write(_header(RAFT_MEMBER, len(raft_bytes)))
            out.write(raft_bytes)
            _pad(out, len(raft_bytes))
            data_header = out.tell()
            out.write(b"\0" * _BLOCK)
            out.flush()
            data_start = out.tell()
            _copy_paced(pinned, out.fileno())
            data_end = os.lseek(out.fileno(), 0, os.SEEK_END)
            out.seek(data_end)
            _pad(out, data_end - data_start)
            out.write(b"\0" * (2 * _BLOCK))  # end of archive
            size = out.tell()
            out.seek(data_header)
            out.write(_header(DATA_MEMBER, data_end - data_start))
            out.flush()
            os.fsync(out.fileno())
        return size
    finally:
        pinned.txn.abort()


def check(path: str) -> None:
    """Raise ValueError unless ``path`` holds both members, whole (a received file is checked
    before it replaces the node's snapshot)."""
    size = os.path.getsize(path)
    try:
        with tarfile.open(path, "r") as tar:
            members = {member.name: member for member in tar.getmembers()}
    except tarfile.TarError as error:
        raise ValueError(f"{path}: not a snapshot ({error})") from None
    for name in (RAFT_MEMBER, DATA_MEMBER):
        member = members.get(name)
        if member is None or member.offset_data + member.size > size:
            raise ValueError(f"{path}: {name} is missing or cut short")


def read_raft_data(path: str) -> Any:
    """pysyncobj's bookkeeping stored in the snapshot at ``path``."""
    with tarfile.open(path, "r") as tar:
        member = tar.extractfile(RAFT_MEMBER)
        if member is None:
            raise ValueError(f"{path}: no {RAFT_MEMBER} in the snapshot")
        return pickle.loads(member.read())


def extract_data(path: str, target: str) -> None:
    """Copy the snapshot's LMDB file to ``target`` (fsynced), in the kernel."""
    with tarfile.open(path, "r") as tar:
        member = tar.getmember(DATA_MEMBER)
    with open(path, "rb") as source:
        extraction = Extraction(target, member.offset_data, member.size)
        try:
            extraction.advance(source.fileno(), member.offset_data + member.size)
            if not extraction.finish():
                raise ValueError(f"{path}: the snapshot ends inside {DATA_MEMBER}")
        finally:
            extraction.close()


def data_member(path: str) -> tuple[int, int] | None:
    """Where the LMDB file lies in a snapshot file that may still be arriving: (offset, size), or None
    while its header has not arrived (it follows the small ``raft.pickle``, within the first chunk)."""
    try:
        with tarfile.open(path, "r:") as tar:
            for member in iter(tar.next, None):
                if member.name == DATA_MEMBER:
                    return member.offset_data, member.size
    except (tarfile.TarError, EOFError):
        return None
    return None


class Extraction:
    """The LMDB file of a snapshot file, copied out (by the kernel, ``copy_file_range``) as the snapshot's
    bytes become available: while a follower receives a snapshot, so that installing it needs no copy
    of gigabytes in the Raft thread (measured at 1 M contexts: the copy held it for seconds)."""

    def __init__(self, target: str, offset: int, size: int) -> None:
        self._out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._offset, self._size = offset, size
        self._copied = 0
        self._unsynced = 0

    def advance(self, source: int, available: int) -> None:
        """Copy what the source file descriptor holds of the member below byte ``available``."""
        end = min(available, self._offset + self._size)
        while self._offset + self._copied < end:
            start = self._offset + self._copied
            copied = os.copy_file_range(source, self._out, min(end - start, _COPY_CHUNK), start)
            if copied == 0:
                return  # the source is shorter than it said: ``finish`` reports the member incomplete
            self._copied += copied
            self._unsynced += copied
            if self._unsynced >= FLUSH_EVERY:
                os.fdatasync(self._out)
                self._unsynced = 0

    def finish(self) -> bool:
        """Make the copy durable; whether it holds the whole member."""
        os.fsync(self._out)
        return self._copied == self._size

    def close(self) -> None:
        os.close(self._out)
