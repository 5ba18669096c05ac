"""The Raft journal: pysyncobj's FileJournal semantics and file format, space reserved ahead, compaction
that gives space back, and term/vote slots that survive a torn write.

Compared with pysyncobj's own FileJournal as the oracle (hypothesis), on real files; the disk-full
cases run on a small tmpfs this test mounts (root only, as in CI).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import shutil
import threading
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pysyncobj.journal import APP_VERSION, FileJournal

from mcpdb.raft.journal import Journal, JournalFull, JournalSyncFailed
from mcpdb.store import background_io
from mcpdb.store.background_io import TRASH_PREFIX
from tests.conftest import mounted_tmpfs

RESERVE_BYTES = 1 << 20  # small, as SEGMENT: the suite must fit on a small disk
SEGMENT = 8 << 20

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.binary(max_size=64)),
        st.tuples(st.just("from"), st.integers(0, 12)),
        st.tuples(st.just("to"), st.integers(0, 12)),
        st.tuples(st.just("clear"), st.none()),
    ),
    max_size=40,
)


def _apply(journal: FileJournal | Journal, ops: list[tuple[str, object]], counter: list[int]) -> None:
    for op, arg in ops:
        if op == "add":
            counter[0] += 1
            assert isinstance(arg, bytes)
            journal.add(arg, counter[0], counter[0] // 3)
        elif op == "from":
            assert isinstance(arg, int)
            journal.deleteEntriesFrom(arg)
        elif op == "to":
            assert isinstance(arg, int)
            journal.deleteEntriesTo(arg)
        else:
            journal.clear()


def _entries(journal: FileJournal | Journal) -> list[tuple[bytes, int, int]]:
    return [tuple(journal[i]) for i in range(len(journal))]  # type: ignore[misc]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=OPS,
    segment_bytes=st.sampled_from([200, 1000, 64 << 20]),
    cache_bytes=st.sampled_from([0, 150, 32 << 20]),  # commands past the cache are read back from disk
)
def test_same_entries_as_pysyncobj_filejournal_across_segments_and_after_reopening(
    tmp_path: Path, ops: list, segment_bytes: int, cache_bytes: int
) -> None:
    directory = tmp_path / f"{abs(hash(str(ops)))}-{segment_bytes}-{cache_bytes}"
    directory.mkdir()
    try:
        _compare_with_the_oracle(directory, ops, segment_bytes, cache_bytes)
    finally:
        shutil.rmtree(directory)  # sixty examples' reserves would otherwise stay on disk to the session's end


def _compare_with_the_oracle(directory: Path, ops: list, segment_bytes: int, cache_bytes: int) -> None:
    oracle = FileJournal(str(directory / "oracle"))
    ours = Journal(str(directory / "ours"), APP_VERSION, True, RESERVE_BYTES, segment_bytes, cache_bytes)
    _apply(oracle, ops, [0])
    _apply(ours, ops, [0])
    expected = _entries(oracle)
    assert _entries(ours) == expected
    assert list(ours) == expected and ours[1:-1] == expected[1:-1] and ours[::2] == expected[::2]
    if expected:
        assert ours[-1] == expected[-1] and ours[0] == expected[0]
    oracle._destroy()
    ours._destroy()
    reopened = Journal(str(directory / "ours"), APP_VERSION, True, RESERVE_BYTES, segment_bytes, cache_bytes)
    assert _entries(reopened) == expected
    # pysyncobj's (and release 0.1's) single file moves into the first segment on the first open.
    migrated = Journal(str(directory / "oracle"), APP_VERSION, True, RESERVE_BYTES, segment_bytes, cache_bytes)
    assert _entries(migrated) == expected
    assert _entries(FileJournal(str(directory / "oracle"))) == []  # emptied once moved


def _disk_bytes(directory: Path) -> int:
    return sum(path.stat().st_blocks * 512 for path in directory.iterdir())


def test_compaction_deletes_whole_segments_and_rewrites_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    journal = Journal(path, APP_VERSION, True, RESERVE_BYTES, SEGMENT)
    for index in range(1, 2001):
        journal.add(os.urandom(SEGMENT // 1024), index, 1)  # two segments' worth of entries: three segments
    segments = tmp_path / "journal.d"
    grown = _disk_bytes(segments)
    last = sorted(segments.iterdir())[-1]
    inode = last.stat().st_ino
    journal.deleteEntriesTo(1999)
    assert [entry[1] for entry in _entries(journal)] == [2000]
    for _ in range(200):  # dropped segments are renamed aside at once and freed by a background thread
        if not any(path.name.startswith(TRASH_PREFIX) for path in segments.iterdir()):
            break
        threading.Event().wait(0.05)
    assert grown > 2 * SEGMENT and _disk_bytes(segments) <= SEGMENT + RESERVE_BYTES + (1 << 20)
    assert sorted(segments.iterdir())[-1] == last and last.stat().st_ino == inode, "the kept segment was rewritten"
    journal.add(b"after", 2001, 1)
    journal._destroy()
    assert [entry[1] for entry in _entries(Journal(path, APP_VERSION, True, RESERVE_BYTES, SEGMENT))] == [2000, 2001]


def test_term_and_vote_survive_reopening_a_torn_slot_and_the_upgrade_from_pysyncobj_meta(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    with open(path + ".meta", "wb") as legacy:  # what pysyncobj's MetaStorer writes
        legacy.write(pickle.dumps({"currentTerm": 7, "votedForNodeId": "127.0.0.1:1", "raftCommitIndex": 40}))
    journal = Journal(path, APP_VERSION, True, RESERVE_BYTES)
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId(), journal.getRaftCommitIndex()) == (
        7,
        "127.0.0.1:1",
        40,
    )
    journal.setCurrentTerm(8, None)
    journal.setCurrentTerm(9, "127.0.0.1:2")
    journal._destroy()
    reopened = Journal(path, APP_VERSION, True, RESERVE_BYTES)
    assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (9, "127.0.0.1:2")
    reopened._destroy()
    # Tear the newest slot (term 9, sequence 3 -> slot 1): the older slot (term 8) is used.
    with open(path + ".meta", "r+b") as meta:
        meta.seek(256 + 30)
        meta.write(b"\xff\xff")
    torn = Journal(path, APP_VERSION, True, RESERVE_BYTES)
    assert (torn.getCurrentTerm(), torn.getVotedForNodeId()) == (8, None)


def test_a_full_disk_is_a_flag_then_a_refused_entry_never_a_crash_and_space_returning_clears_it(
    tmp_path: Path,
) -> None:
    with mounted_tmpfs(tmp_path / "small", "160m") as disk:
        journal = Journal(str(disk / "journal"), APP_VERSION, True, RESERVE_BYTES)
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave less than one reservation free
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * (1 << 20))
        index = 0
        with pytest.raises(JournalFull):
            while True:
                index += 1
                journal.add(b"x" * (256 << 10), index, 1)
        assert journal.low_space and journal.room < 256 << 10
        entries = len(journal)
        journal._destroy()
        assert len(Journal(str(disk / "journal"), APP_VERSION, True, RESERVE_BYTES)) == entries  # nothing half-written
        filler.unlink()
        reopened = Journal(str(disk / "journal"), APP_VERSION, True, RESERVE_BYTES)
        assert reopened.retry_reserve() and not reopened.low_space
        reopened.add(b"after", index, 1)


def test_a_cleared_journal_takes_a_snapshots_two_entries_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower's install empties the journal, then adds the snapshot's last two entries: they fit in the
    blocks the emptied segment frees, whatever the disk has left (``Journal.clear``), while the segments
    it retires are not freed yet (the deleter frees them a step at a time, on a thread of its own). In a
    new segment the first add failed (an audit, session 25: pysyncobj's install then left the node an
    empty journal until a restart); failed on every run before (3 of 3)."""
    monkeypatch.setattr(background_io._deleter, "submit", lambda trash: None)  # not freed during the test
    with mounted_tmpfs(tmp_path / "small", "160m") as disk:
        journal = Journal(str(disk / "journal"), APP_VERSION, True, RESERVE_BYTES, segment_bytes=1 << 20)
        for index in range(1, 40):  # several segments
            journal.add(b"x" * (64 << 10), index, 1)
        with open(disk / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
        journal.clear()
        journal.add(b"previous", 99, 2)
        journal.add(b"last", 100, 2)
        journal.sync()
        journal._destroy()
        assert _entries(Journal(str(disk / "journal"), APP_VERSION, True, RESERVE_BYTES)) == [
            (b"previous", 99, 2),
            (b"last", 100, 2),
        ]


def _command(index: int) -> bytes:
    return hashlib.sha256(str(index).encode()).digest() * 2048  # 64 KiB, made again to compare


def test_only_the_newest_commands_stay_in_memory_and_older_ones_read_back_intact(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        journal = Journal(str(tmp_path / "journal"), APP_VERSION, False, RESERVE_BYTES, SEGMENT, cache_bytes=1 << 20)
        baseline = tracemalloc.get_traced_memory()[0]
        for index in range(1, 201):  # 12.8 MB of entries, none kept by the test
            journal.add(_command(index), index, 1)
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert held < 2 << 20, f"{held} bytes held for 1 MiB of cache"
    assert [entry[0] for entry in journal] == [_command(index) for index in range(1, 201)]
    assert journal[3] == (_command(4), 4, 1) and journal[-1] == (_command(200), 200, 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 3000), min_size=1, max_size=40),
    dropped=st.integers(0, 10),
    first=st.integers(0, 55),
    span=st.integers(0, 50),
    budget=st.integers(0, 10_000),
)
def test_a_slice_ends_where_its_commands_outgrow_the_budget_and_holds_one_entry_at_least_and_reaches_sums(
    tmp_path: Path, lengths: list[int], dropped: int, first: int, span: int, budget: int
) -> None:
    journal = Journal(str(tmp_path / f"journal-{os.urandom(4).hex()}"), APP_VERSION, False, RESERVE_BYTES, SEGMENT)
    try:
        for index, length in enumerate(lengths, start=1):
            journal.add(b"x" * length, index, 1)
        dropped = min(dropped, len(lengths) - 1)
        if dropped:
            journal.deleteEntriesTo(dropped)  # compaction: positions 0..dropped-1, indexes 1..dropped, are gone
        last = first + span
        held = range(dropped + 1, len(lengths) + 1)
        if first not in held:
            expected = last
        else:
            expected, total = first, lengths[first - 1]
            while expected + 1 <= min(last, held[-1]) and total + lengths[expected] <= budget:
                total += lengths[expected]
                expected += 1
        assert journal.slice_end(first, last, budget) == expected
        held_bytes = sum(lengths[index - 1] for index in held if first <= index <= last)
        threshold = max(budget, 1)
        assert journal.reaches(first, last, threshold) == (held_bytes >= threshold)
    finally:
        journal._destroy()


def test_a_failed_write_of_the_term_and_vote_stops_the_node_as_a_failed_fsync_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``JournalSyncFailed`` makes the Raft thread exit the process (``RaftNode._onTick``): a term or
    vote pysyncobj already holds in memory must never be acted on without being on disk."""
    journal = Journal(str(tmp_path / "raft.journal"), APP_VERSION, True, 0)
    try:
        journal.setCurrentTerm(1, None)

        def failing_fsync(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(JournalSyncFailed, match="term and vote"):
            journal.setCurrentTerm(2, "127.0.0.1:1")
        with pytest.raises(JournalSyncFailed, match="term and vote"):
            journal.sync()  # again, at the next tick's start, if pysyncobj swallowed the first
        monkeypatch.undo()
        journal._meta.failed = None
        monkeypatch.setattr(os, "fsync", failing_fsync)
        journal.add(b"x", 2, 2)
        with pytest.raises(JournalSyncFailed, match="fsync of the Raft journal"):
            journal.sync()
    finally:
        monkeypatch.undo()
        journal._destroy()
