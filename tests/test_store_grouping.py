"""The same entries leave the same store however a replica's ticks group them into commits.

The Raft thread applies a tick's entries in one LMDB transaction, and ticks fall differently on every
replica, so nothing the store keeps may depend on where a group ends. The applied index, the index
format's mark and the trimmed change history are written once per group (as it commits), not once per
entry: the history keeps the newest whole versions that fit, which comes out the same after each
entry or after the group's last. Refused entries (a wrong version) are among the generated ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpdb.store.commands import Batch, BatchPut, Command, Delete, Put
from mcpdb.store.state_machine import HistoryTrimmed
from tests.store_helpers import AppliedLog, index_state
from tests.test_store_stateful import CONTEXTS, IDS, NAMESPACES, _reads

CHANGE_HISTORY = 6  # small, so that most runs trim

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
    return {
        "applied": store.applied_index(),
        "reads": _reads(store),
        "indexes": index_state(store),
        "history": _history(store),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(COMMANDS, min_size=1, max_size=25), ends=st.lists(st.booleans(), min_size=25, max_size=25))
def test_grouping_entries_into_commits_changes_nothing(
    tmp_path_factory: Any, commands: list[Command], ends: list[bool]
) -> None:
    root: Path = tmp_path_factory.mktemp("grouping")
    one_by_one = AppliedLog(str(root / "one"), change_history=CHANGE_HISTORY)
    grouped = AppliedLog(str(root / "grouped"), change_history=CHANGE_HISTORY)
    try:
        for command, group_ends in zip(commands, ends, strict=False):
            one_by_one.apply(command)
            grouped.index += 1
            grouped.store.apply(grouped.index, command, commit=group_ends)
        grouped.store.commit()
        assert _everything(grouped) == _everything(one_by_one)
    finally:
        one_by_one.store.close()
        grouped.store.close()
