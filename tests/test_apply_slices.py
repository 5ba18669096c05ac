"""``apply_in_slices``: a tick's committed entries applied a slice at a time within its budget, with
the commit index always put back; driven by a stand-in for pysyncobj's apply loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mcpdb.raft import apply_slices
from mcpdb.raft.apply_slices import apply_in_slices
from mcpdb.store.commands import Batch, BatchPut
from tests.raft_helpers import in_process_cluster, slow_applies, wait_until

TIMEOUT_S = 30.0


class _Log:
    """pysyncobj's view: entries applied through ``commit`` each time ``apply`` runs, each taking
    ``seconds[index]`` of a fake clock."""

    def __init__(self, seconds: dict[int, float], applied: int = 0) -> None:
        self.seconds = seconds
        self.applied = applied
        self.commit = 0
        self.now = 0.0
        self.calls: list[tuple[int, int]] = []  # (first, last) applied by each call
        self.refuse: set[int] = set()

    def apply(self) -> None:
        first = self.applied + 1
        for index in range(first, self.commit + 1):
            self.now += self.seconds.get(index, 0.0)
            if index not in self.refuse:
                self.applied += 1
        self.calls.append((first, self.commit))

    def set_commit(self, index: int) -> None:
        self.commit = index

    def run(self, commit: int, slice_entries: int, bulk: frozenset[int] = frozenset()) -> None:
        self.commit = commit
        apply_in_slices(
            self.apply,
            commit,
            self.set_commit,
            lambda: self.applied,
            lambda first, last: min(last, first + slice_entries - 1),
            bulk.__contains__,
            clock=lambda: self.now,
        )


def test_a_cheap_backlog_is_applied_whole_in_one_tick() -> None:
    log = _Log({})
    log.run(commit=50, slice_entries=64)
    assert log.applied == 50 and log.calls == [(1, 50)] and log.commit == 50


def test_a_dear_backlog_stops_once_the_budget_is_spent_and_the_next_tick_goes_on() -> None:
    log = _Log({index: 0.15 for index in range(1, 4)})  # three bulk batches, each past the budget
    log.run(commit=3, slice_entries=1)
    assert log.applied == 1 and log.commit == 3, "one batch a tick, the commit index restored"
    log.run(commit=3, slice_entries=1)
    log.run(commit=3, slice_entries=1)
    assert log.applied == 3 and log.calls == [(1, 1), (2, 2), (3, 3)]


def test_slices_go_on_while_the_budget_lasts() -> None:
    log = _Log({index: apply_slices.BUDGET_S / 10 for index in range(1, 101)})
    log.run(commit=100, slice_entries=4)
    assert log.applied == 12 and log.calls[-1] == (9, 12), "slices until the budget is spent, the last one included"


def test_a_bulk_entry_waits_for_a_tick_of_its_own_after_the_small_ones_before_it() -> None:
    log = _Log({})
    log.run(commit=6, slice_entries=1, bulk=frozenset({1, 4}))
    assert log.applied == 3 and log.calls == [(1, 1), (2, 2), (3, 3)], "a bulk entry first, then small ones"
    log.run(commit=6, slice_entries=1, bulk=frozenset({1, 4}))
    assert log.applied == 6 and log.calls[3:] == [(4, 4), (5, 5), (6, 6)]


def test_an_entry_that_does_not_apply_ends_the_slicing_at_once() -> None:
    log = _Log({})
    log.refuse = {1}
    log.run(commit=5, slice_entries=1)
    assert log.calls == [(1, 1)] and log.commit == 5


def test_the_commit_index_is_put_back_when_the_apply_raises() -> None:
    log = _Log({})

    def fail() -> None:
        raise RuntimeError("the store failed")

    log.commit = 10
    with pytest.raises(RuntimeError):
        apply_in_slices(fail, 10, log.set_commit, lambda: 0, lambda first, last: first, lambda index: False)
    assert log.commit == 10


APPLY_S = 0.3  # each entry's apply: four of them outlast the longest election timeout (1 s)


def test_a_leader_with_entries_slow_to_apply_keeps_its_followers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three in-process voters whose stores take ``APPLY_S`` per entry, four bulk entries committed at once.
    pysyncobj applied all four in one tick before the leader sent anything, 1.2 s without a heartbeat:
    its followers stood and one of them took over. Applied in slices, the leader heartbeats between them.

    The leader's command lanes would append them one at a time; they are told to hold nothing here, as
    bulk entries still come committed together elsewhere: to a follower back from a partition, or to a
    new leader committing its predecessor's entries."""
    with in_process_cluster(tmp_path) as voters:
        leader = voters[0][0]
        for replication, _ in voters:
            monkeypatch.setattr(replication._raft._lanes, "_holds_bulk", lambda: False)
        term = leader.status()["term"]
        slow_applies(voters, monkeypatch, APPLY_S, lambda command: True)

        async def four_batches_at_once() -> None:
            batches = [
                Batch(
                    "ns",
                    tuple(
                        BatchPut(f"c{i}-{j}", {"kind": "memory", "facts": ["x" * 1000]}, None, None) for j in range(300)
                    ),
                    1.0,
                )
                for i in range(4)
            ]  # each entry past SLICE_BYTES, as a bulk load's 500 records are: a slice of its own
            await asyncio.gather(*(leader.propose(batch, TIMEOUT_S) for batch in batches))

        asyncio.run(four_batches_at_once())
        wait_until(lambda: all(store.get("ns", "c3-299") is not None for _, store in voters), "not applied everywhere")
        time.sleep(1.5)  # time for a follower that stood to win
        assert leader.is_leader() and [replication.status()["term"] for replication, _ in voters] == [term] * 3
