"""The leader's queue of proposals in two lanes: bulk commands one entry at a time, the rest at once.

Raft's log is one queue, and an entry waits for every entry before it to be applied. Bulk entries are
dear to apply (a 500-record batch with words: 80-130 ms on a free core at a million contexts, several
times that on two saturated cores), small ones cheap. With three loaders' batches appended as they
came, a 1 KiB write arriving behind them waited for all of them: in ``mcpdb bench scale --contexts
1000000``'s load phase the probe's p50 was 480 ms and its p99 1,152 ms (etcd 3.4's: 259 ms). Loaders
keep the log full of batches, so every interactive request paid for the whole bulk backlog.

So a leader appends a bulk command (``BULK_BYTES`` or more) only once the bulk entry it appended
last has been applied on it, and appends the other commands as they come, ahead of the bulk ones
held back. A small write then waits for at most the one bulk entry being applied, and the held
batches wait in this queue instead of in the log (as CockroachDB's admission control and TiKV's
priorities put interactive work before bulk imports). The held bulk command is let through in the
tick that applied the one before it, and sent to the followers in that same tick, so a loader loses
one replication round trip per batch. A follower holds nothing back: it forwards every proposal to
its leader at once, where this queue orders them.

Held bulk commands are kept per key (a namespace: a tenant) and taken in turn, one per key, and a key
may hold at most half of them. Else one tenant whose loaders keep
sending batches would fill the queue, and every other tenant's batches would be refused or wait
behind all of its (as ``mcpdb.admission`` shares its queues between namespaces).

Safe: a command in this queue has not been appended, so it has not been acknowledged, and commands
that are pending together are concurrent; any order of them is linearizable (each still takes effect
between its request and its answer). What a command does is decided when it is applied, in log
order, on every replica alike.

Same interface as pysyncobj's ``FastQueue`` (``put_nowait``, ``get_nowait``, the ``queue`` module's
``Full`` and ``Empty``), which it replaces: pysyncobj puts every proposal, local or forwarded, with
``put_nowait`` from any thread and takes them with ``get_nowait`` in its own thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

_log = logging.getLogger(__name__)

BULK_BYTES = 64 * 1024  # a batch of tens of contexts; a context's own write, a turn, a token are smaller
# Bulk proposals a leader holds: as many as it appends and applies, one after another, in half the
# request timeout (the cycle from one bulk take to the next, measured while more were held: the
# batch's replication and apply on cores the other work shares). One more is refused at once (503,
# certainly not applied, safe to retry), where held it would likely wait out the timeout and be
# answered "may or may not be applied". Measured, not fixed: on an empty store a 500-record batch's
# cycle is tens of milliseconds and a fixed eight refused loaders that would have finished in a
# second; at a million contexts on two saturated cores it is a fifth of a second or more.
HELD_BULK_BEFORE_MEASURED = 8  # until a cycle is measured: eight 500-record batches at 1 M take 1-3 s
MIN_HELD_BULK = 2
MAX_HELD_BULK = 64
CYCLE_WEIGHT = 0.2  # of the newest cycle in the running estimate: a few batches to follow a change


class CommandLanes:
    """At most ``max_size`` proposals, taken small first; a bulk one only while ``holds_bulk()`` is
    false. While ``leads()``, at most ``held_bound()`` bulk ones wait, half of them of one key
    (``key_of`` a bulk command's bytes), taken one key after another, and one that has waited past
    half the request timeout is refused (``refuse`` its callback) at the next take, never appended. ``took_bulk()``
    runs, in the taking thread, each time a bulk proposal is taken."""

    def __init__(
        self,
        max_size: int,
        leads: Callable[[], bool],
        holds_bulk: Callable[[], bool],
        took_bulk: Callable[[], None],
        refuse: Callable[[Any], None],
        key_of: Callable[[bytes], Hashable],
        wait_budget_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._small: deque[tuple[bytes, Any]] = deque()
        # Per key, (when put, proposal); the next key's first.
        self._bulk: OrderedDict[Hashable, deque[tuple[float, tuple[bytes, Any]]]] = OrderedDict()
        self._held_bulk = 0
        self._max_size = max_size
        self._leads = leads
        self._holds_bulk = holds_bulk
        self._took_bulk = took_bulk
        self._refuse = refuse
        self._key_of = key_of
        self._wait_budget_s = wait_budget_s
        self._clock = clock
        self._cycle_s: float | None = None  # from one bulk take to the next, while more were held
        self._busy_since: float | None = None  # the last bulk take, if more were held after it

    def held_bound(self) -> int:
        """How many bulk proposals a leader holds at most now."""
        if self._cycle_s is None:
            return HELD_BULK_BEFORE_MEASURED
        return max(MIN_HELD_BULK, min(MAX_HELD_BULK, int(self._wait_budget_s / max(self._cycle_s, 1e-3))))

    def put_nowait(self, item: tuple[bytes, Any]) -> None:
        """Any thread; ``leads`` is read here without the Raft thread's agreement, as a hint: at worst
        a node that has just lost or won an election forwards or refuses one proposal it would not have."""
        with self._lock:
            if self._max_size > 0 and len(self._small) + self._held_bulk >= self._max_size:
                raise queue.Full
            if len(item[0]) < BULK_BYTES:
                self._small.append(item)
                return
            key = self._key_of(item[0])
            held = self._bulk.get(key)
            bound = self.held_bound()
            # A follower forwards its own at its next tick, however many: its leader's lanes share them out.
            if self._leads() and (self._held_bulk >= bound or (held is not None and len(held) >= max(1, bound // 2))):
                raise queue.Full
            if held is None:
                held = self._bulk[key] = deque()
            held.append((self._clock(), item))
            self._held_bulk += 1

    def get_nowait(self) -> tuple[bytes, Any]:
        refused: list[Any] = []
        try:
            with self._lock:
                if self._small:
                    return self._small.popleft()
                now, leads = self._clock(), self._leads()
                if leads:
                    self._take_stale(now, refused)
                if not self._bulk or self._holds_bulk():
                    raise queue.Empty
                key, held = next(iter(self._bulk.items()))
                _, item = held.popleft()
                if held:
                    self._bulk.move_to_end(key)  # the other keys' turn first
                else:
                    del self._bulk[key]
                self._held_bulk -= 1
                self._measure_cycle(now, leads)
                self._took_bulk()
                return item
        finally:
            self._answer_refused(refused)

    def _take_stale(self, now: float, refused: list[Any]) -> None:
        """Take out the held proposals that have waited past the budget, whether or not a bulk entry is
        being applied (in a stall, most of all): appended later they would likely outwait the request
        timeout and be answered "may or may not be applied"; refused now they certainly are not. Each
        key's proposals are in the order they came, so only its oldest are looked at."""
        emptied = []
        for key, held in self._bulk.items():
            while held and now - held[0][0] > self._wait_budget_s:
                refused.append(held.popleft()[1][1])
                self._held_bulk -= 1
            if not held:
                emptied.append(key)
        for key in emptied:
            del self._bulk[key]
        if not self._held_bulk:
            self._busy_since = None  # the time until the next bulk proposal comes is no cycle

    def _answer_refused(self, callbacks: list[Any]) -> None:
        """Outside the lock: a forwarded proposal's refusal is sent to its node. Each is answered even if
        another's refusal failed (the Raft thread's tick goes on)."""
        for callback in callbacks:
            try:
                self._refuse(callback)
            except Exception:
                _log.exception("could not refuse a bulk proposal that waited too long")

    def _measure_cycle(self, now: float, leads: bool) -> None:
        """Note a bulk take: the time since the last one is a cycle if bulk proposals waited all along
        (a leader's only; a follower forwards them as fast as they come). A stall (an fsync, a lost
        quorum) counts as at most twice the budget, so the estimate comes back in a few batches."""
        if self._busy_since is not None and leads:
            cycle = min(now - self._busy_since, 2 * self._wait_budget_s)
            self._cycle_s = cycle if self._cycle_s is None else self._cycle_s + CYCLE_WEIGHT * (cycle - self._cycle_s)
        self._busy_since = now if self._held_bulk and leads else None

    def role_changed(self) -> None:
        """Raft thread: each term of leadership measures its own cycles (a take after an election would
        measure the time as a follower; a leader elected again hours later, on other load, starts over)."""
        with self._lock:
            self._busy_since = self._cycle_s = None

    def has_ready(self) -> bool:
        """Whether ``get_nowait`` would return a proposal now (the Raft thread's poll then does not wait)."""
        return bool(self._small) or (bool(self._bulk) and not self._holds_bulk())

    def held_bulk(self) -> int:
        """Bulk proposals waiting in this queue."""
        return self._held_bulk
