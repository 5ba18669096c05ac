"""A bulk entry applied in steps across ticks (``ContextStore.prepare``) leaves what a whole apply leaves,
and shows nothing before its apply; in a cluster, followers acknowledge the writes behind it meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpdb.store import snapshot
from mcpdb.store.commands import Batch, BatchDelete, BatchPut, Command, Put
from mcpdb.store.state_machine import ContextStore
from tests.raft_helpers import in_process_cluster, wait_until
from tests.store_helpers import AppliedLog
from tests.test_store_grouping import CHANGE_HISTORY, COMMANDS, _everything
from tests.test_store_stateful import CONTEXTS, IDS, NAMESPACES

# Batches of puts and deletes, some with a version that may not match: refused in the middle of their steps.
OPERATIONS = st.one_of(
    st.builds(BatchPut, st.sampled_from(IDS), CONTEXTS, st.none(), st.sampled_from([None, None, 0, 2])),
    st.builds(BatchDelete, st.sampled_from(IDS), st.sampled_from([None, 3])),
)
ENTRIES = st.one_of(
    COMMANDS,
    st.builds(
        Batch, st.sampled_from(NAMESPACES), st.lists(OPERATIONS, min_size=1, max_size=6).map(tuple), st.just(1.0)
    ),
)

TIMEOUT_S = 30.0


class _Clock:
    """One unit per reading: a step of ``seconds`` runs about that many of a batch's operations."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _prepare_then_apply(log: AppliedLog, command: Command, steps: int, before: dict[str, Any]) -> None:
    """Prepare ``command`` a step of ``steps`` operations at a time, checking between steps that the
    store shows ``before`` (committing, as each tick does), then apply it."""
    log.index += 1
    clock = _Clock()
    while not log.store.prepare(log.index, lambda: command, float(steps), clock):
        log.store.commit()  # every tick commits its group: it must leave the preparation alone
        assert log.store.applied_index() == log.index - 1
        assert log.store.pin_snapshot().index == log.index - 1, "a snapshot meanwhile is the applied state"
        assert _everything(log) == before
    log.store.apply(log.index, command, commit=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    commands=st.lists(ENTRIES, min_size=1, max_size=15),
    steps=st.lists(st.integers(0, 4), min_size=15, max_size=15),
)
def test_an_entry_prepared_in_steps_leaves_what_a_whole_apply_leaves(
    tmp_path_factory: Any, commands: list[Command], steps: list[int]
) -> None:
    """Each entry applied whole to one store, and to the other either whole into the open group
    (``steps`` 0, committed later, as a tick's small entries) or prepared ``steps`` operations at a
    time: the preparation first commits what the group holds, which ``before`` must then show."""
    root: Path = tmp_path_factory.mktemp("prepared")
    whole = AppliedLog(str(root / "whole"), change_history=CHANGE_HISTORY)
    stepped = AppliedLog(str(root / "stepped"), change_history=CHANGE_HISTORY)
    try:
        for command, step in zip(commands, steps, strict=False):
            whole.apply(command)
            if step:
                stepped.store.commit()
                _prepare_then_apply(stepped, command, step, _everything(stepped))
            else:
                stepped.index += 1
                stepped.store.apply(stepped.index, command, commit=False)
        stepped.store.commit()
        assert _everything(stepped) == _everything(whole)
    finally:
        whole.store.close()
        stepped.store.close()


def _batch(count: int, text: str = "a fact about tea") -> Batch:
    puts = tuple(BatchPut(f"c{i}", {"kind": "memory", "facts": [text]}, None, None) for i in range(count))
    return Batch("ns", puts, 1.0)


def test_a_refused_batch_prepared_in_steps_applies_nothing(tmp_path: Path) -> None:
    """The third operation's version check fails after two steps: the whole batch is refused."""
    log = AppliedLog(str(tmp_path / "s"))
    ops = (*_batch(2).ops, BatchPut("c0", {"kind": "memory", "facts": ["x"]}, None, 99))
    command = Batch("ns", ops, 1.0)
    clock = _Clock()
    assert not log.store.prepare(1, lambda: command, 1.0, clock)
    while not log.store.prepare(1, lambda: command, 1.0, clock):
        pass
    result = log.store.apply(1, command)
    assert result is not None and result["error"] == "version_conflict"
    assert log.store.get("ns", "c0") is None and log.store.applied_index() == 1


def test_a_preparation_a_close_interrupts_is_not_applied(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    log = AppliedLog(path)
    log.apply(Put("ns", "before", {"kind": "memory", "facts": ["kept"]}, None, None, 1.0))
    assert not log.store.prepare(2, lambda: _batch(10), 3.0, _Clock())
    log.store.close()
    reopened = ContextStore(path)
    try:
        assert reopened.applied_index() == 1 and reopened.get("ns", "before") is not None
        assert reopened.get("ns", "c0") is None
        assert reopened.apply(2, _batch(10)) is not None and reopened.get("ns", "c9") is not None
    finally:
        reopened.close()


def test_a_snapshot_installed_during_a_preparation_replaces_it(tmp_path: Path) -> None:
    """A follower sent a snapshot while it prepares an entry: the entry goes, the snapshot's state stays,
    and the follower applies the entries after it."""
    path = str(tmp_path / "snap.tar")
    source = AppliedLog(str(tmp_path / "source"))
    follower = AppliedLog(str(tmp_path / "follower"))
    try:
        for log in (source, follower):
            log.apply(Put("ns", "first", {"kind": "memory", "facts": ["one"]}, None, None, 1.0))
        source.apply(_batch(10))
        snapshot.write(path, source.store.pin_snapshot(), (("cmd", 2, 1), ("cmd", 1, 1), None))
        assert not follower.store.prepare(2, lambda: _batch(10, "other words"), 3.0, _Clock())
        follower.store.install_snapshot(path)
        follower.store.commit()  # the next tick's: nothing of the dropped preparation is left to commit
        installed = follower.store.get("ns", "c9")
        assert follower.store.applied_index() == 2 and installed is not None
        assert installed["facts"] == ["a fact about tea"]
        follower.index = source.index = 2
        for log in (source, follower):
            log.apply(Put("ns", "after", {"kind": "memory", "facts": ["three"]}, None, None, 1.0))
        assert _everything(follower) == _everything(source)
    finally:
        source.store.close()
        follower.store.close()


OP_S = 0.004  # each batch operation's extra time in the cluster test: 300 of them, 1.2 s per batch


def test_followers_acknowledge_while_they_apply_a_bulk_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three in-process voters whose batch operations take ``OP_S`` each: a batch takes 1.2 s to apply,
    longer than the longest election timeout. A small write proposed while every voter applies it is
    committed (a majority acknowledged it) before the batch is applied anywhere, and no Raft thread
    stalls: applied whole, the followers read no socket for 1.2 s and restarted their election timers."""
    real_put = ContextStore._put

    def slow_put(self: ContextStore, *args: Any) -> bool:
        if args[3].startswith("c"):  # the batch's operations, not the small write
            time.sleep(OP_S)
        return real_put(self, *args)

    monkeypatch.setattr(ContextStore, "_put", slow_put)
    with in_process_cluster(tmp_path) as voters:
        leader = voters[0][0]
        term = leader.status()["term"]
        bulk = _batch(300, "x" * 300)  # past BULK_BYTES: prepared in steps

        async def write_during_the_batch() -> tuple[int, int]:
            """(the batch's index, the most any voter had applied once the small write committed)"""
            raft = leader._raft
            batch_index = raft._SyncObj__getCurrentLogIndex() + 1
            batch = asyncio.ensure_future(leader.propose(bulk, TIMEOUT_S))
            await asyncio.to_thread(
                wait_until, lambda: all(r._raft.commit_index >= batch_index for r, _ in voters), "batch not committed"
            )
            await asyncio.sleep(0.2)
            assert all(store._preparation is not None for _, store in voters), "every voter is in the batch's apply"
            small = asyncio.ensure_future(
                leader.propose(Put("ns", "small", {"kind": "memory", "facts": ["y"]}, None, None, 1.0), TIMEOUT_S)
            )
            await asyncio.to_thread(wait_until, lambda: raft.commit_index > batch_index, "small write not committed")
            applied = max(replication._raft.last_applied for replication, _ in voters)
            await asyncio.gather(batch, small)
            return batch_index, applied

        batch_index, applied = asyncio.run(write_during_the_batch())
        assert applied < batch_index, "the small write committed before the batch was applied anywhere"
        wait_until(lambda: all(store.get("ns", "small") is not None for _, store in voters), "not applied everywhere")
        assert [replication._raft.stalls for replication, _ in voters] == [0, 0, 0]
        assert [replication.status()["term"] for replication, _ in voters] == [term] * 3
