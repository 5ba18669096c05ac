"""Apply committed entries a slice at a time, so a tick with a backlog to apply still sends and reads.

pysyncobj applies every committed entry in one tick (``SyncObj.__applyLogEntries``) before the
leader sends anything and before any node reads its sockets. Entries that are cheap to append can
be dear to apply: at a million contexts a 500-record batch with words takes 80-130 ms to apply on a
free core, several times that on two saturated cores. A leader holding several of them can go
past the 0.5 s minimum election timeout without a heartbeat, and its followers stand
(``tests/test_apply_slices.py``; a candidate cause of the one leader change in ``mcpdb bench scale
--contexts 1000000``'s load phase, session 18).

So the backlog is applied in slices of at most ``SLICE_BYTES`` of commands (at least one entry)
until ``BUDGET_S`` has gone by; the rest waits for the next tick, after this one has sent its
AppendEntries, committed the group to LMDB and read its sockets (the poll does not wait while
committed entries remain). A bulk entry (``BULK_BYTES`` or more) is applied only first in a tick,
so the small writes committed before it are committed to LMDB and answered without waiting for
it. Replicas stay identical: the order of applies is the log's, and where a tick ends only changes
which entries share an LMDB commit, which the store's state does not depend on
(``tests/test_store_grouping.py``). The clock decides how long a tick runs, never what any replica
holds.

A bulk entry is itself applied in steps of ``PREPARE_STEP_S`` across ticks (``ContextStore.prepare``,
called by ``RaftNode._bulk_entry_in_preparation`` before the slices), and only counted applied once
whole. Between two steps the thread reads its sockets, appends, acknowledges and heartbeats, so a
follower applying a batch still acknowledges the small writes behind it, and a write waits for the
batch's apply on its leader alone (``tests/test_bulk_preparation.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mcpdb.raft.command_lanes import BULK_BYTES

BUDGET_S = 0.1  # a fifth of the minimum election timeout: heartbeats leave at least this often
# Small writes' worth of entries; a bulk entry (at least as large) is always a slice of its own, so
# the tick can end before it.
SLICE_BYTES = BULK_BYTES
PREPARE_STEP_S = 0.02  # one step of a bulk entry's apply: a tick's wait for it, against ~0.3 ms a tick costs


def apply_in_slices(
    apply_committed: Callable[[], object],
    commit_index: int,
    set_commit_index: Callable[[int], None],
    last_applied: Callable[[], int],
    slice_end: Callable[[int, int], int],
    bulk: Callable[[int], bool],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``apply_committed`` (which applies through the commit index) with the commit index
    lowered to the end of one slice at a time, until everything through ``commit_index`` is applied
    or ``BUDGET_S`` has passed; the commit index is ``commit_index`` again on return, whatever
    was raised. ``slice_end(first, last)`` names the last entry of the slice that starts at
    ``first``, no later than ``last``.

    An entry ``bulk`` names is applied only first in a tick: the entries before it are committed and
    answered at the end of the tick that applied them, not after the bulk entry's apply as well (a
    write committed together with the bulk batch behind it waited for that batch)."""
    started, first_applied = clock(), last_applied()
    try:
        while True:
            applied = last_applied()
            if applied >= commit_index or (applied > first_applied and bulk(applied + 1)):
                return
            set_commit_index(slice_end(applied + 1, commit_index))
            apply_committed()
            if last_applied() == applied or clock() - started >= BUDGET_S:
                return  # nothing applied (an entry pysyncobj refused), or the tick's share is spent
    finally:
        set_commit_index(commit_index)
