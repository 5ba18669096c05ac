"""Reads and commits proceed while the store writes a snapshot, and the snapshot stays its index's state.

The snapshot thread is parked at a known point, by design rather than by timing:
``snapshot.write`` pickles pysyncobj's bookkeeping after the LMDB version it copies
was pinned and before the copy, and the bookkeeping here holds an object whose
pickling waits for the test. Everything else is real: LMDB, the store, threads.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpdb.store import snapshot
from mcpdb.store.commands import Put
from mcpdb.store.state_machine import ContextStore

WAIT_S = 30.0  # only bounds a failure (a read blocked by the snapshot); never a speed assertion


class ParkedPickle:
    """Pickling it parks the pickling thread until ``release`` is set."""

    def __init__(self) -> None:
        self.parked = threading.Event()
        self.release = threading.Event()

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        self.parked.set()
        assert self.release.wait(WAIT_S), "the test never released the snapshot"
        return type(None), ()


def _put(store: ContextStore, index: int, context_id: str) -> None:
    command = Put(
        ns="a",
        id=context_id,
        context={"kind": "memory", "facts": [context_id], "data": {}, "user_id": None, "tags": []},
        ttl=None,
        if_version=None,
        now=1_000.0,
    )
    assert store.apply(index, command)["ok"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ContextStore]:
    opened = ContextStore(str(tmp_path / "store"))
    for index in range(1, 51):
        _put(opened, index, f"c{index}")
    yield opened
    opened.close()


def _in_thread(action: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def test_reads_and_commits_proceed_while_a_snapshot_is_written(store: ContextStore, tmp_path: Path) -> None:
    parked = ParkedPickle()
    path = str(tmp_path / "snap.tar")
    pinned = store.pin_snapshot()
    writer = _in_thread(lambda: snapshot.write(path, pinned, (("cmd", 50, 1), ("cmd", 49, 1), parked)))
    try:
        assert parked.parked.wait(WAIT_S)
        reads: dict[str, Any] = {}

        def read_and_write() -> None:
            reads["before"] = store.get("a", "c1")
            reads["page"] = len(store.list("a", limit=1000).items)
            _put(store, 51, "late")  # a commit (the writer is otherwise the snapshotting thread)
            reads["after"] = store.get("a", "late")
            reads["applied"] = store.applied_index()

        reader = _in_thread(read_and_write)
        reader.join(WAIT_S)
        assert not reader.is_alive(), "a read or commit waited for the snapshot"
        assert reads["before"]["facts"] == ["c1"] and reads["page"] == 50
        assert reads["after"]["facts"] == ["late"] and reads["applied"] == 51
    finally:
        parked.release.set()
        writer.join(WAIT_S)
    assert not writer.is_alive()

    # The snapshot is the state at index 50, pinned before the commit of 51.
    fresh = ContextStore(str(tmp_path / "fresh"))
    try:
        fresh.install_snapshot(path)
        assert fresh.applied_index() == 50
        assert fresh.get("a", "late") is None
        assert len(fresh.list("a", limit=1000).items) == 50
    finally:
        fresh.close()


def test_a_read_open_across_a_snapshot_install_finishes_on_the_old_state(store: ContextStore, tmp_path: Path) -> None:
    """Installing a snapshot replaces the environment without closing it under an open read.

    The read is held open the way every store read runs: on the generation it took at its start.
    """
    path = str(tmp_path / "snap.tar")
    source = ContextStore(str(tmp_path / "source"))
    try:
        for index in range(1, 101):
            _put(source, index, f"s{index}")
        snapshot.write(path, source.pin_snapshot(), (("cmd", 100, 1), ("cmd", 99, 1), None))
    finally:
        source.close()
    generation = store._generation
    with generation.env.begin() as txn:
        store.install_snapshot(path)
        assert store.get("a", "s1") is not None and store.get("a", "c1") is None
        assert ContextStore._get_record(txn, generation.dbs, b"a\x00c1") is not None
    assert store.applied_index() == 100 and store.snapshots_installed == 1


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe ``fd`` reads."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def _until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_refused_command_does_not_wait_for_a_copy_in_flight(store: ContextStore) -> None:
    """A command the state machine refuses rolls back its child transaction; py-lmdb 2.x makes that abort
    wait for every LMDB call in flight, the snapshot's copy included (57 s of Raft thread at 1 M contexts).
    The copy is held in flight, inside LMDB, by a pipe nobody reads until the refusal has returned."""
    pinned = store.pin_snapshot()
    reader, writer = os.pipe()
    size = fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)  # the copy fills it at once and stays in LMDB's write
    copy = _in_thread(lambda: pinned.env.copyfd(writer, compact=True, txn=pinned.txn))
    refusal: dict[str, Any] = {}
    try:
        assert _until(lambda: _unread(reader) >= size), "the copy never filled the pipe"
        conflicting = Put(
            ns="a", id="c1", context={"kind": "memory", "facts": ["x"]}, ttl=None, if_version=99, now=1_000.0
        )
        refuse = _in_thread(lambda: refusal.setdefault("result", store.apply(51, conflicting)))
        refuse.join(WAIT_S)
        assert copy.is_alive(), "the copy was meant to be still in flight"
        assert not refuse.is_alive(), "the refused command waited for the snapshot's copy"
        assert refusal["result"]["ok"] is False
    finally:
        drain = _in_thread(lambda: [None for _ in iter(lambda: os.read(reader, 1 << 16), b"")])
        copy.join(WAIT_S)
        os.close(writer)
        drain.join(WAIT_S)
        os.close(reader)
        pinned.txn.abort()
    assert store.get("a", "c1")["facts"] == ["c1"] and store.applied_index() == 51
