"""The same entries leave the same store however a replica's ticks group them into commits.

The Raft thread applies a tick's entries in one LMDB transaction, and ticks fall differently on every
replica, so nothing the store keeps may depend on where a group ends. The applied index, the index
format's mark and the trimmed change history are written once per group (as it commits), not once per
entry: the history keeps the newest whole versions that fit, which comes out the same after each
entry or after the group's last. Refused entries (a wrong version) and entries applied again at their
index (a journal replay) are among the generated ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpdb.store.commands import Batch, BatchPut, Command, Delete, Put
from mcpdb.store.state_machine import _APPLIED, _INDEX_FORMAT, _TRIMMED, HistoryTrimmed
from tests.store_helpers import AppliedLog, index_state
from tests.test_store_stateful import CONTEXTS, IDS, NAMESPACES, _reads

CHANGE_HISTORY = 3  # small, so that most runs trim

COMMANDS = st.one_of(
    st.builds(
        Put,
        st.sampled_from(NAMESPACES),
        st.sampled_from(IDS),
        CONTEXTS,
        st.none(),
        st.sampled_from([None, 1, 3]),
        st.just(1000.0),
    ),
    st.builds(Delete, st.sampled_from(NAMESPACES), st.sampled_from(IDS), st.none()),
    st.builds(
        Batch,
        st.sampled_from(NAMESPACES),
        st.lists(st.builds(BatchPut, st.sampled_from(IDS), CONTEXTS, st.none(), st.none()), min_size=1, max_size=3).map(
            tuple
        ),
        st.just(1000.0),
    ),
)


def _history(store: Any) -> tuple[int, list[Any]]:
    """The oldest version whose later changes are all kept, and those changes."""
    version = 0
    while True:
        try:
            return version, store.changes_after(version)
        except HistoryTrimmed:
            version += 1


def _everything(log: AppliedLog) -> dict[str, Any]:
    store = log.store
    generation = store._generation
    with generation.env.begin(db=generation.dbs[b"meta"]) as txn:
        meta = {key: txn.get(key) for key in (_APPLIED, _INDEX_FORMAT, _TRIMMED)}
    return {
        "applied": store.applied_index(),
        "meta": meta,
        "reads": _reads(store),
        "indexes": index_state(store),
        "history": _history(store),
    }


def _apply_both(
    one_by_one: AppliedLog, grouped: AppliedLog, commands: list[Command], ends: list[bool], replays: list[bool]
) -> None:
    """Each command to both stores at the same index, ``grouped`` committing only where ``ends`` says;
    where ``replays`` says, the entry again at its index, as a journal replay would."""
    for command, group_ends, replay in zip(commands, ends, replays, strict=False):
        one_by_one.apply(command)
        grouped.index += 1
        grouped.store.apply(grouped.index, command, commit=group_ends)
        if replay:
            assert one_by_one.store.apply(one_by_one.index, command) is None
            assert grouped.store.apply(grouped.index, command, commit=False) is None
    grouped.store.commit()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    commands=st.lists(COMMANDS, min_size=1, max_size=25),
    ends=st.lists(st.booleans(), min_size=25, max_size=25),
    replays=st.lists(st.booleans(), min_size=25, max_size=25),
)
def test_grouping_entries_into_commits_changes_nothing(
    tmp_path_factory: Any, commands: list[Command], ends: list[bool], replays: list[bool]
) -> None:
    root: Path = tmp_path_factory.mktemp("grouping")
    one_by_one = AppliedLog(str(root / "one"), change_history=CHANGE_HISTORY)
    grouped = AppliedLog(str(root / "grouped"), change_history=CHANGE_HISTORY)
    try:
        _apply_both(one_by_one, grouped, commands, ends, replays)
        assert _everything(grouped) == _everything(one_by_one)
    finally:
        one_by_one.store.close()
        grouped.store.close()


def test_a_grouped_history_is_trimmed_as_one_by_one(tmp_path: Path) -> None:
    """The property above with a run that certainly trims: ten puts in groups of four."""
    one_by_one = AppliedLog(str(tmp_path / "one"), change_history=CHANGE_HISTORY)
    grouped = AppliedLog(str(tmp_path / "grouped"), change_history=CHANGE_HISTORY)
    commands: list[Command] = [
        Put("a", f"c{number}", {"kind": "memory", "facts": [f"fact {number}"]}, None, None, 1000.0)
        for number in range(10)
    ]
    try:
        _apply_both(one_by_one, grouped, commands, [number % 4 == 3 for number in range(10)], [False] * 10)
        state = _everything(grouped)
        assert state == _everything(one_by_one)
        assert state["history"][0] == 7 and len(state["history"][1]) == CHANGE_HISTORY
    finally:
        one_by_one.store.close()
        grouped.store.close()
