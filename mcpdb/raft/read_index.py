"""Raft ReadIndex (Ongaro's thesis, §6.4) over the node's Raft connections.

A linearizable read needs a read index: a commit index that covers every
write completed before the read arrived, taken by a node that was still the
leader at that moment. The leader

1. waits until an entry of its own term is committed (its election no-op),
   so its commit index is at least every index committed by earlier leaders;
2. records its commit index when a round of reads starts;
3. sends a ping carrying its term to every voter; once a majority (itself
   included) answered with that same term, no other leader can have existed
   when the round started, so the recorded index is a valid read index.

A follower forwards its reads to the leader and gets the read index back; any
node then serves the read from its own store once it has applied that index,
or, for a read of one namespace, once it has applied every entry up to that
index that could change what the read sees: those of its namespace and those
of none (``RaftView.last_entry_for``). A committed entry of another namespace
that is not applied yet (a loader's 500-record batch, applied in steps over a
fifth of a second at a million contexts) changes nothing such a read returns,
so the read is the same as at the read index: still linearizable, without
waiting behind another tenant's bulk load.
Reads share rounds: each tick of the Raft thread starts at most one round
for the reads that arrived since the last one, and rounds overlap. Pings
travel in order on each connection, so a pong for round s also confirms
every earlier round: the leader keeps, per voter, the highest round it
answered in the current term. This costs one network round trip and no log entry,
no fsync and no apply, which is what made it replace the earlier no-op-entry
barrier (measured: linearizable reads went from ~3,700/s to the figures in
benchmarks/RESULTS.md on the same cluster).

Everything here except ``request`` runs in the Raft thread: message
handlers via the transport, the rest from the node's on-tick callback. It
reads Raft's state through ``RaftView`` (``pysyncobj_bridge.RaftNode``
implements it), so it holds no pysyncobj names.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

# callback(read_index, error): exactly one of them is None
Done = Callable[[int | None, str | None], None]
Waiter = tuple[Done, str | None]  # and the one namespace the read reads (None: anything)

ROUND_TIMEOUT_S = 1.0
PING, PONG, ASK, ANSWER = "mcpdb_ri_ping", "mcpdb_ri_pong", "mcpdb_ri_ask", "mcpdb_ri_answer"
MESSAGE_TYPES = frozenset({PING, PONG, ASK, ANSWER})

Peer = Hashable  # a Raft node as the transport addresses it


class RaftView(Protocol):
    """The Raft state ReadIndex reads, in the Raft thread."""

    @property
    def current_term(self) -> int: ...
    @property
    def commit_index(self) -> int: ...
    @property
    def last_applied(self) -> int: ...
    @property
    def own_term_noop_index(self) -> int | None:
        """Index of the no-op this leader appended on election (None before it did)."""

    @property
    def voting_peers(self) -> Collection[Peer]:
        """The other voters."""

    def last_entry_for(self, namespace: str, after: int, through: int) -> int:
        """The last index in (``after``, ``through``] whose entry may change what a read of
        ``namespace`` sees, ``after`` if none does."""

    def is_leader(self) -> bool: ...
    def known_leader(self) -> Peer | None: ...


@dataclass
class _Round:
    seq: int
    term: int
    commit_index: int
    started: float
    local: list[Waiter]  # this node's reads
    remote: list[tuple[Peer, int]]  # (follower, request id): answered as soon as confirmed


@dataclass
class _Forwarded:
    leader: Peer
    started: float
    waiters: list[Waiter]


class ReadIndex:
    """Confirms read indexes for one node; see the module docstring for the protocol."""

    def __init__(self, raft: RaftView, send: Callable[[Peer, dict[str, Any]], bool], wake: Callable[[], None]) -> None:
        self._raft = raft
        self._send = send
        self._wake = wake
        self._incoming: collections.deque[Waiter] = collections.deque()
        self._queued: list[Waiter] = []  # leader: waiting for the next round
        self._rounds: dict[int, _Round] = {}  # in flight, oldest first
        self._answered: dict[Peer, tuple[int, int]] = {}  # voter -> (term, highest round answered)
        self._seq = itertools.count(1)
        self._forwarded: dict[int, _Forwarded] = {}  # follower: request id -> waiters
        self._request_ids = itertools.count(1)
        self._remote: list[tuple[Peer, int]] = []  # leader: (node, request id) for the next round
        self._applied_waiters: list[tuple[int, Done, str | None]] = []
        self.rounds = 0
        self.served_ahead = 0  # reads of one namespace answered before this node applied their read index

    # ------------------------------------------------------------ any thread
    def request(self, done: Done, namespace: str | None = None) -> None:
        """Ask for a read index; ``done`` runs in the Raft thread once this node applied it (for a read
        of one ``namespace``, once it applied what of it concerns that namespace)."""
        self._incoming.append((done, namespace))
        self._wake()

    def has_incoming(self) -> bool:
        return bool(self._incoming)

    # ------------------------------------------------------------ Raft thread
    def on_tick(self) -> None:
        now = time.monotonic()
        batch = []
        while self._incoming:
            batch.append(self._incoming.popleft())
        if self._raft.is_leader():
            self._fail_forwarded("this node became the leader")
            self._queued.extend(batch)
            if (self._queued or self._remote) and self._own_term_committed():
                self._start_round(now)
            self._check_rounds(now)
        else:
            self._fail_rounds("leadership lost")
            self._fail_queued("leadership lost")
            if batch:
                self._forward(batch, now)
            self._expire_forwarded(now)
        self._release_applied()

    def on_message(self, node: Peer, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == PING:
            self._send(node, {"type": PONG, "seq": message["seq"], "term": self._raft.current_term})
        elif kind == PONG:
            if message["term"] == self._raft.current_term and node in self._raft.voting_peers:
                term, seq = self._answered.get(node, (0, 0))
                if term != message["term"] or seq < message["seq"]:
                    self._answered[node] = (message["term"], message["seq"])
                self._check_rounds(time.monotonic())
        elif kind == ASK:
            if self._raft.is_leader():
                self._remote.append((node, message["id"]))
                self._wake()
            else:
                self._send(node, {"type": ANSWER, "id": message["id"], "error": "not the leader"})
        elif kind == ANSWER:
            forwarded = self._forwarded.pop(message["id"], None)
            if forwarded is None:
                return
            error = message.get("error")
            for done, namespace in forwarded.waiters:
                if error is None:
                    self._applied_waiters.append((message["index"], done, namespace))
                else:
                    done(None, error)
            self._release_applied()

    # ------------------------------------------------------------ leader
    def _check_rounds(self, now: float) -> None:
        term = self._raft.current_term
        for seq, current in list(self._rounds.items()):
            if current.term != term:
                self._fail_round(seq, "term changed")
            elif self._confirmed(current):
                del self._rounds[seq]
                for done, namespace in current.local:
                    self._applied_waiters.append((current.commit_index, done, namespace))
                for node, request_id in current.remote:
                    self._send(node, {"type": ANSWER, "id": request_id, "index": current.commit_index})
            elif now - current.started > ROUND_TIMEOUT_S:
                self._fail_round(seq, "a majority did not confirm the leader in time")
        self._release_applied()

    def _start_round(self, now: float) -> None:
        local, self._queued = self._queued, []
        remote, self._remote = self._remote, []
        self.rounds += 1
        current = _Round(next(self._seq), self._raft.current_term, self._raft.commit_index, now, local, remote)
        self._rounds[current.seq] = current
        for node in self._raft.voting_peers:
            self._send(node, {"type": PING, "seq": current.seq, "term": current.term})

    def _confirmed(self, current: _Round) -> bool:
        answered = sum(
            1 for node in self._raft.voting_peers if self._answered.get(node, (0, 0)) >= (current.term, current.seq)
        )
        return (answered + 1) * 2 > len(self._raft.voting_peers) + 1

    def _own_term_committed(self) -> bool:
        noop_index = self._raft.own_term_noop_index
        return noop_index is not None and self._raft.commit_index >= noop_index

    def _fail_round(self, seq: int, reason: str) -> None:
        current = self._rounds.pop(seq)
        self._fail(current.local, current.remote, reason)

    def _fail_rounds(self, reason: str) -> None:
        for seq in list(self._rounds):
            self._fail_round(seq, reason)

    def _fail_queued(self, reason: str) -> None:
        queued, self._queued = self._queued, []
        remote, self._remote = self._remote, []
        self._fail(queued, remote, reason)

    def _fail(self, local: list[Waiter], remote: list[tuple[Peer, int]], reason: str) -> None:
        for done, _ in local:
            done(None, reason)
        for node, request_id in remote:
            self._send(node, {"type": ANSWER, "id": request_id, "error": reason})

    # ------------------------------------------------------------ follower
    def _forward(self, batch: list[Waiter], now: float) -> None:
        leader = self._raft.known_leader()
        if leader is None:
            for done, _ in batch:
                done(None, "no leader known")
            return
        request_id = next(self._request_ids)
        self._forwarded[request_id] = _Forwarded(leader, now, batch)
        if not self._send(leader, {"type": ASK, "id": request_id}):
            self._forwarded.pop(request_id)
            for done, _ in batch:
                done(None, "the leader is unreachable")

    def _expire_forwarded(self, now: float) -> None:
        leader = self._raft.known_leader()
        for request_id, forwarded in list(self._forwarded.items()):
            if forwarded.leader != leader or now - forwarded.started > ROUND_TIMEOUT_S:
                del self._forwarded[request_id]
                for done, _ in forwarded.waiters:
                    done(None, "the leader changed or did not answer in time")

    def _fail_forwarded(self, reason: str) -> None:
        forwarded, self._forwarded = self._forwarded, {}
        for entry in forwarded.values():
            for done, _ in entry.waiters:
                done(None, reason)

    # ------------------------------------------------------------ both
    def wait_applied(self, index: int, done: Done, namespace: str | None = None) -> None:
        """Raft thread, after the store committed: ``done`` once this node applied ``index`` (a read
        index another node obtained, e.g. the leader's for an inference request), or for a read of one
        ``namespace``, what of it concerns that namespace."""
        self._applied_waiters.append((index, done, namespace))
        self._release_applied()

    def _release_applied(self) -> None:
        if not self._applied_waiters:
            return
        applied = self._raft.last_applied
        waiting = []
        for index, done, namespace in self._applied_waiters:
            if index <= applied:
                done(index, None)
            elif namespace is not None and self._raft.last_entry_for(namespace, applied, index) <= applied:
                self.served_ahead += 1
                done(index, None)
            else:
                waiting.append((index, done, namespace))
        self._applied_waiters = waiting
