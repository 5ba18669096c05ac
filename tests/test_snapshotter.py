"""The snapshotter's hand-offs between its worker and the Raft thread, and what a follower accepts.

Real LMDB stores and real snapshot files; each case is one the raft review found by reading:
a snapshot renamed by the worker could outlive a stop before the journal was compacted (at
start-up pysyncobj then dropped every entry after it), or replace a newer one installed from the
leader; a received file with a gap could be installed.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj.journal import APP_VERSION

from mcpdb.raft.journal import Journal
from mcpdb.raft.pysyncobj_bridge import JOURNAL_TO_STORE, align_with_snapshot, snapshot_due
from mcpdb.raft.snapshotter import CHUNK_BYTES, MAX_BACKLOG, STREAM_BYTES_PER_S, Snapshotter
from mcpdb.store import snapshot
from mcpdb.store.commands import Put
from mcpdb.store.state_machine import ContextStore

WAIT_S = 30.0  # bounds a failure only


def _store(directory: Path, entries: int) -> ContextStore:
    store = ContextStore(str(directory))
    for index in range(1, entries + 1):
        context = {"kind": "memory", "facts": [str(index)], "data": {}, "user_id": None, "tags": []}
        store.apply(index, Put(ns="a", id=f"c{index}", context=context, ttl=None, if_version=None, now=1.0))
    return store


def _raft_data(index: int) -> tuple[tuple[bytes, int, int], tuple[bytes, int, int], None]:
    return ((b"cmd", index, 1), (b"cmd", index - 1, 1), None)


def _snapshot_file(directory: Path, name: str, entries: int) -> tuple[str, bytes]:
    """The path and bytes of a snapshot of a store of ``entries`` contexts, as a leader sends it."""
    source = _store(directory / name, entries)
    path = str(directory / f"{name}.snapshot")
    snapshot.write(path, source.pin_snapshot(), _raft_data(entries))
    source.close()
    with open(path, "rb") as f:
        return path, f.read()


def _wait_written(snapshots: Snapshotter) -> None:
    began = time.monotonic()
    while snapshots._result is None:
        assert time.monotonic() - began < WAIT_S
        time.sleep(0.01)


def _written(path: str, store: ContextStore, index: int) -> Snapshotter:
    """A snapshotter at ``path`` whose worker has written a snapshot of ``store`` at ``index``, not yet
    taken by the Raft thread (``finished``)."""
    snapshots = Snapshotter(path, store, lambda size: True)
    snapshots.start(_raft_data(index))
    _wait_written(snapshots)
    return snapshots


def test_the_snapshot_is_renamed_into_place_by_the_raft_thread_not_the_worker(tmp_path: Path) -> None:
    store = _store(tmp_path / "store", 20)
    path = str(tmp_path / "raft.snapshot")
    snapshots = _written(path, store, 20)
    assert not os.path.exists(path), "the worker renamed it: a stop now would leave the journal uncompacted"
    done = snapshots.finished()
    assert done is not None and done.error is None and os.path.exists(path)
    assert snapshot.read_raft_data(path)[0][1] == 20
    # A stop while one is being written drops it: the journal was not compacted for it.
    snapshots.start(_raft_data(20))
    snapshots.close()
    assert not os.path.exists(path + ".writing")
    store.close()


def test_a_local_snapshot_finished_after_one_from_the_leader_was_installed_is_discarded(tmp_path: Path) -> None:
    store = _store(tmp_path / "store", 20)
    leader = _store(tmp_path / "leader", 40)
    leaders_file = str(tmp_path / "leader.snapshot")
    snapshot.write(leaders_file, leader.pin_snapshot(), _raft_data(40))
    path = str(tmp_path / "raft.snapshot")
    snapshots = _written(path, store, 20)
    with open(leaders_file, "rb") as f:
        data = f.read()
    assert snapshots.receive((data, True, False), applied=0) is False
    assert snapshots.receive((b"", False, True), applied=0) is True
    done = snapshots.finished()
    assert done is not None and done.error is not None
    assert snapshot.read_raft_data(path)[0][1] == 40, "the older local snapshot replaced the leader's"
    store.close()
    leader.close()


def test_a_received_snapshot_at_or_below_the_applied_index_is_not_put_in_place(tmp_path: Path) -> None:
    """This node already holds that state and more: its own snapshot stays, nothing is left beside it,
    and a newer one from the leader is still taken."""
    _, older = _snapshot_file(tmp_path, "older", 30)
    _, newer = _snapshot_file(tmp_path, "newer", 50)
    store = _store(tmp_path / "store", 40)
    path = str(tmp_path / "raft.snapshot")
    snapshots = _written(path, store, 40)
    done = snapshots.finished()
    assert done is not None and done.error is None
    for applied in (30, 40):
        assert snapshots.receive((older, True, False), applied=applied) is False
        assert snapshots.receive((b"", False, True), applied=applied) is False
    assert snapshots.older_refused == 2 and snapshot.read_raft_data(path)[0][1] == 40
    assert not os.path.exists(path + ".receiving") and not (tmp_path / "store" / "gen-2").exists()
    assert snapshots.receive((newer, True, False), applied=40) is False
    assert snapshots.receive((b"", False, True), applied=40) is True and snapshot.read_raft_data(path)[0][1] == 50
    store.close()


def test_a_received_snapshot_with_a_gap_is_never_installed(tmp_path: Path) -> None:
    _, data = _snapshot_file(tmp_path, "good", 30)
    store = _store(tmp_path / "store", 5)
    path = str(tmp_path / "raft.snapshot")
    snapshots = Snapshotter(path, store, lambda size: True)
    # Chunks arriving without the first one (the transfer began before this node listened) are ignored.
    assert snapshots.receive((data[1024:], False, False), applied=0) is False
    assert snapshots.receive((b"", False, True), applied=0) is False and not os.path.exists(path)
    # A transfer that lost a chunk in the middle is refused whole.
    assert snapshots.receive((data[:1024], True, False), applied=0) is False
    assert snapshots.receive((data[-4096:], False, False), applied=0) is False
    assert snapshots.receive((b"", False, True), applied=0) is False
    assert not os.path.exists(path) and not os.path.exists(path + ".receiving")
    # The whole file is accepted.
    assert (
        snapshots.receive((data, True, False), applied=0) is False
        and snapshots.receive((b"", False, True), applied=0) is True
    )
    store.close()


def test_a_snapshot_is_sent_whole_at_a_bounded_rate_and_none_is_taken_meanwhile(tmp_path: Path) -> None:
    store = ContextStore(str(tmp_path / "store"))
    for index in range(1, 8001):  # about 16 MB with its indexes: past the burst, so the rest is paced
        context = {"kind": "memory", "facts": [f"{index:08d}" + "x" * 1000], "data": {}, "user_id": None, "tags": []}
        store.apply(index, Put(ns="a", id=f"c{index}", context=context, ttl=None, if_version=None, now=1.0))
    store.commit()
    path = str(tmp_path / "raft.snapshot")
    snapshots = _written(path, store, 8000)
    assert snapshots.finished() is not None and not snapshots.sending
    with open(path, "rb") as f:
        expected = f.read()
    received: list[bytes] = []  # joined at the end: the loop must cost the same per chunk at any size
    refused, began = 0, time.monotonic()
    while True:
        piece = snapshots.chunk("follower", backlog=0)
        if piece is None:  # the token bucket is empty: the Raft thread goes on with other work
            refused += 1
            time.sleep(0.001)
            continue
        data, first, last = piece
        assert first == (not received)
        received.append(data)
        if not last:
            assert snapshots.sending
            snapshots.start(_raft_data(8000))  # pysyncobj asks again every tick: nothing starts
            assert not snapshots.busy
        if last:
            break
    elapsed = time.monotonic() - began
    assert b"".join(received) == expected
    assert not snapshots.sending  # the transfer ended: snapshots may be taken again
    beyond_burst = len(expected) - MAX_BACKLOG
    assert beyond_burst > 2 * CHUNK_BYTES  # only what exceeds the initial burst is paced
    assert refused > 0 and elapsed >= 0.8 * beyond_burst / STREAM_BYTES_PER_S
    assert snapshots.chunk("follower", backlog=MAX_BACKLOG + 1) is None  # a backed-up connection waits
    store.close()


def test_no_transfer_begins_while_a_newer_snapshot_is_being_written(tmp_path: Path) -> None:
    store = _store(tmp_path / "store", 50)
    path = str(tmp_path / "raft.snapshot")
    snapshots = _written(path, store, 50)
    assert snapshots.finished() is not None
    release = threading.Event()
    writes = snapshot.write

    def held_write(*args: Any) -> int:
        release.wait(WAIT_S)
        return writes(*args)

    with mock.patch.object(snapshot, "write", held_write):
        snapshots.start(_raft_data(50))
        assert snapshots.busy
        assert snapshots.chunk("new follower", backlog=0) is None  # it would be restarted as this lands
        release.set()
        _wait_written(snapshots)
    assert snapshots.finished() is not None
    first = snapshots.chunk("new follower", backlog=0)
    assert first is not None and first[1]  # now it begins, from the newer file
    store.close()


def test_a_journal_left_uncompacted_by_a_stop_is_aligned_with_the_snapshot_at_start_up(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "raft.journal"), APP_VERSION, durable=True, reserve=1 << 20)
    for index in range(1, 11):
        journal.add(b"cmd", index, 1)
    store = _store(tmp_path / "store", 6)
    path = str(tmp_path / "raft.snapshot")
    snapshot.write(path, store.pin_snapshot(), _raft_data(6))
    align_with_snapshot(journal, path)
    # pysyncobj keeps a journal that begins with the snapshot's last two entries, and then replays the rest.
    assert [entry[1] for entry in journal] == [5, 6, 7, 8, 9, 10]
    align_with_snapshot(journal, path)  # already aligned: nothing changes
    assert [entry[1] for entry in journal] == [5, 6, 7, 8, 9, 10]
    store.close()


def test_a_snapshot_is_due_past_the_floor_or_half_the_store_whichever_is_more() -> None:
    floor = 256 << 20
    assert not snapshot_due(floor, store=100 << 20, floor=floor)  # small store: the floor
    assert snapshot_due(floor + 1, store=100 << 20, floor=floor)
    store = 4 << 30  # large store: half of it
    assert not snapshot_due(int(JOURNAL_TO_STORE * store), store=store, floor=floor)
    assert snapshot_due(int(JOURNAL_TO_STORE * store) + 1, store=store, floor=floor)
    # Entries, against the store's records: 1,000 probe writes into a million contexts are not due.
    assert not snapshot_due(1_000, store=1_000_000, floor=1_000)
    assert snapshot_due(500_001, store=1_000_000, floor=1_000)


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.integers(1, 1 << 32))
def test_snapshot_bytes_per_journal_byte_stay_bounded_at_any_store_size(journal: int, store: int, floor: int) -> None:
    """The reason for the proportional trigger: the snapshot a due journal causes writes the store,
    at most 1 / JOURNAL_TO_STORE times the journal once the store outgrew the floor."""
    if snapshot_due(journal, store, floor):
        assert store <= journal / JOURNAL_TO_STORE


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 64 << 10), min_size=1, max_size=40))
def test_a_received_snapshot_is_extracted_as_it_arrives_and_installed_without_a_copy(
    tmp_path_factory: pytest.TempPathFactory, cuts: list[int]
) -> None:
    tmp_path = tmp_path_factory.mktemp("extract")
    leaders_file, data = _snapshot_file(tmp_path, "leader", 300)
    store = _store(tmp_path / "store", 5)
    snapshots = Snapshotter(str(tmp_path / "raft.snapshot"), store, lambda size: True)
    offsets = sorted({0, *(cut % len(data) for cut in cuts), len(data)})  # chunks of any size, headers split too
    for start, end in itertools.pairwise(offsets):
        assert snapshots.receive((data[start:end], start == 0, False), applied=0) is False
    offset, size = snapshot.data_member(leaders_file) or (0, -1)
    extracted = tmp_path / "store" / "gen-2" / snapshot.DATA_MEMBER  # the store's next generation
    assert os.path.getsize(extracted) == size, "the LMDB file was not copied out as the chunks arrived"
    with open(extracted, "rb") as copy:
        assert copy.read() == data[offset : offset + size]
    assert snapshots.receive((b"", False, True), applied=0) is True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshot, "extract_data", lambda *_: pytest.fail("the install copied the LMDB file again"))
        raft_data = snapshots.install(lambda: None)
    assert raft_data[0][1] == 300 and store.applied_index() == 300
    first = store.get("a", "c1")
    assert store.get("a", "c300") is not None and first is not None and first["facts"] == ["1"]
    store.close()


def test_an_abandoned_or_restarted_transfer_leaves_no_copy_behind(tmp_path: Path) -> None:
    (_, first), (_, second) = _snapshot_file(tmp_path, "first", 200), _snapshot_file(tmp_path, "second", 300)
    store = _store(tmp_path / "store", 5)
    snapshots = Snapshotter(str(tmp_path / "raft.snapshot"), store, lambda size: True)
    copy = tmp_path / "store" / "gen-2" / snapshot.DATA_MEMBER
    assert snapshots.receive((first[: len(first) // 2], True, False), applied=0) is False
    assert copy.exists()
    snapshots.close()  # a stop mid-transfer: the partial copy goes
    assert not copy.parent.exists()
    # A transfer restarted midway (a new first chunk) installs the second snapshot, whole.
    assert snapshots.receive((first[: len(first) // 2], True, False), applied=0) is False
    assert (
        snapshots.receive((second, True, False), applied=0) is False
        and snapshots.receive((b"", False, True), applied=0) is True
    )
    assert snapshots.install(lambda: None)[0][1] == 300 and store.get("a", "c300") is not None
    store.close()


def test_a_copy_left_by_a_stopped_install_is_removed_when_the_store_opens(tmp_path: Path) -> None:
    store = _store(tmp_path / "store", 5)
    stray = Path(store.next_generation_file())
    stray.write_bytes(b"\0" * 4096)  # as a transfer cut by kill -9 leaves it
    store.close()
    reopened = ContextStore(str(tmp_path / "store"))
    assert not stray.parent.exists() and reopened.applied_index() == 5
    reopened.close()


def test_a_received_snapshot_that_would_not_fit_is_refused_at_its_first_chunk(tmp_path: Path) -> None:
    leaders_file, data = _snapshot_file(tmp_path, "leader", 100)
    located = snapshot.data_member(leaders_file)
    assert located is not None
    store = _store(tmp_path / "store", 5)
    path = str(tmp_path / "raft.snapshot")
    room = {"fits": False}
    asked: list[int] = []

    def fits(size: int) -> bool:  # the disk alarm's check: records why not, as DiskAlarm.snapshot_fits does
        asked.append(size)
        return room["fits"]

    snapshots = Snapshotter(path, store, fits)
    half = len(data) // 2
    assert snapshots.receive((data[:half], True, False), applied=0) is False
    assert asked == [2 * located[1]], "the rest of the file and the LMDB copy beside it"
    assert not os.path.exists(path + ".receiving") and not (tmp_path / "store" / "gen-2").exists()
    assert (
        snapshots.receive((data[half:], False, False), applied=0) is False
        and snapshots.receive((b"", False, True), applied=0) is False
    )
    room["fits"] = True  # space came back: the leader's next transfer installs
    assert (
        snapshots.receive((data, True, False), applied=0) is False
        and snapshots.receive((b"", False, True), applied=0) is True
    )
    assert snapshots.install(lambda: None)[0][1] == 100
    store.close()
