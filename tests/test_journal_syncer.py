"""The journal's syncer thread: tickets, shared passes, a failure that stays, and acknowledgements
that wait for the disk while the Raft thread goes on."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mcpdb.raft import journal_syncer
from mcpdb.raft.journal_syncer import JournalSyncer, JournalSyncFailed
from mcpdb.store.commands import Put
from tests.raft_helpers import in_process_cluster, wait_until

_FSYNC = os.fsync  # the real one: the fixture replaces os.fsync itself (journal_syncer.os is the os module)


class _HeldFsync:
    """os.fsync that waits for ``release`` on the descriptors in ``held``, and counts every call."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.release = threading.Event()
        self.calls: list[int] = []
        self.entered = threading.Event()

    def __call__(self, fd: int) -> None:
        self.calls.append(fd)
        if fd in self.held:
            self.entered.set()
            self.release.wait()
        _FSYNC(fd)


@pytest.fixture
def held_fsync(monkeypatch: pytest.MonkeyPatch) -> _HeldFsync:
    fake = _HeldFsync()
    monkeypatch.setattr(journal_syncer.os, "fsync", fake)
    return fake


def test_requests_made_during_a_pass_share_the_next_one(tmp_path: Path, held_fsync: _HeldFsync) -> None:
    first, second = (os.open(tmp_path / name, os.O_RDWR | os.O_CREAT) for name in ("a", "b"))
    wakes: list[int] = []
    syncer = JournalSyncer(lambda: wakes.append(1))
    try:
        held_fsync.held.add(first)
        one = syncer.request([first])
        assert held_fsync.entered.wait(5)
        two, three = syncer.request([second]), syncer.request([second, first])
        assert (one, two, three) == (1, 2, 3)
        assert not syncer.done(one) and syncer.request([]) == three  # nothing asked: the last ticket
        held_fsync.release.set()
        syncer.wait(three)
        assert syncer.done(one) and syncer.done(three)
        # Two passes: the first file, then the second and the first once more (each once).
        assert held_fsync.calls == [first, second, first] and syncer.fsyncs == 3 and len(wakes) == 2
    finally:
        syncer.close()
        os.close(first)
        os.close(second)


def test_a_failed_fsync_is_final(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT)
    os.close(fd)  # fsync of a closed descriptor fails (EBADF), as a dying disk's fails with EIO
    wakes: list[int] = []
    syncer = JournalSyncer(lambda: wakes.append(1))
    ticket = syncer.request([fd])
    with pytest.raises(JournalSyncFailed):
        syncer.wait(ticket)
    with pytest.raises(JournalSyncFailed):
        syncer.done(ticket)
    later = syncer.request([fd])
    with pytest.raises(JournalSyncFailed):
        syncer.wait(later)
    assert wakes == [1]  # the Raft thread is woken to find the failure
    syncer.close()


def test_close_finishes_what_was_asked(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT)
    syncer = JournalSyncer(lambda: None)
    ticket = syncer.request([fd])
    syncer.close()
    assert syncer.done(ticket)
    os.close(fd)


def _journal_fds(replication: Any) -> set[int]:
    return {segment.fd for segment in replication._raft._transport.journal._segments}


def test_a_write_commits_only_once_a_follower_has_it_on_disk_and_followers_tick_meanwhile(
    tmp_path: Path, held_fsync: _HeldFsync
) -> None:
    """Both followers' journal fsyncs are held for a while: the leader's own copy is on disk, but
    no follower acknowledges the write, so it is not committed; the followers' Raft threads are not
    held meanwhile (each confirms a linearizable read). Released, it commits."""
    with in_process_cluster(tmp_path) as voters:
        (leader, leader_store), *followers = voters
        for replication, _ in followers:
            held_fsync.held |= _journal_fds(replication)
        put = Put("ns", "held", {"kind": "memory", "facts": ["on disk first"]}, None, None, 1.0)
        outcome: list[Any] = []
        writer = threading.Thread(target=lambda: outcome.append(asyncio.run(leader.propose(put, 10.0))))
        writer.start()
        try:
            assert held_fsync.entered.wait(5), "no follower was asked to fsync the write"
            time.sleep(0.3)
            assert leader_store.get("ns", "held") is None, "committed before a follower had it on disk"
            assert not outcome and leader.is_leader()
            for follower, _ in followers:  # its Raft thread is not held: it confirms a read meanwhile
                assert asyncio.run(follower.read_index(2.0)) >= 1
            assert leader_store.get("ns", "held") is None
        finally:
            held_fsync.release.set()
            writer.join(15)
        assert outcome and outcome[0]["version"] >= 1, outcome
        for _, store in voters:
            wait_until(lambda store=store: store.get("ns", "held") is not None, "a voter did not apply the write")
