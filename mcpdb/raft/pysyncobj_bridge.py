"""The one module that touches pysyncobj: every use of its internals, behind a small typed interface.

mcpdb relies on pysyncobj's apply order, journal, transport and thread loop, so it pins the exact
version (``check_pysyncobj_version``) and keeps every such reliance here, where a pysyncobj upgrade
is reviewed in one file (etcd's ``server/etcdserver/raft.go`` plays the same part). The rest of
``mcpdb.raft`` sees ``RaftNode``'s typed methods (propose, membership, leadership, status, the
thread hand-offs) and ``RaftView`` (what ReadIndex reads); nothing else imports pysyncobj.

The seams, each the narrowest one available in 0.3.17:

- ``SyncObj`` is subclassed (``RaftNode``) with one ``@replicated`` method; pysyncobj applies entry
  ``raftLastApplied + 1`` and counts it after the call returns (``SyncObj.__applyLogEntries``).
- The transport class, which pysyncobj instantiates itself inside ``SyncObj.__init__`` before its
  thread starts (``McpdbTransport``): the log guard, ReadIndex messages, durable acknowledgements
  and keepalives; see its docstring.
- ``_SyncObj__raftLog``, the journal: replaced by ``mcpdb.raft.journal.Journal`` (same file format)
  from the transport's constructor, before the thread, with the term, vote and commit index
  pysyncobj read re-read from it; read by the log guard and for the log's first index.
- ``_SyncObj__serializer``: replaced by ``SnapshotSerializer`` the same way (snapshots written off
  the Raft thread, ``mcpdb.raft.snapshotter``); ``_SyncObj__raftElectionDeadline`` is restarted
  after a snapshot install.
- ``_poller.poll``, wrapped once (``RaftNode._wrap_poll``): skip the wait when work is queued, then
  release the acknowledgements the transport held until the journal was fsynced.
- ``_applyCommand`` (overridden to wake the poll through mcpdb's own ``PipeNotifier``) and
  ``_SyncObj__commandsQueue``, replaced by ``mcpdb.raft.command_lanes.CommandLanes`` (bulk proposals
  one entry at a time on a leader; asked before a poll whether work is ready): wake-ups only when needed.
  A held bulk proposal whose turn came too late is refused through ``_SyncObj__callErrCallback``, as
  pysyncobj refuses one its queue has no room for (a forwarded one's node is sent the refusal).
- Batched AppendEntries, sent by mcpdb once a tick (``RaftNode._send_appended``, first of
  ``_SyncObj__onTickCallbacks``, calling ``_SyncObj__sendAppendEntries``); ``_SyncObj__otherNodes`` and
  ``_SyncObj__getCurrentLogIndex`` tell a lone voter's leader not to wait in poll.
- ``_SyncObj__noopIDx``: the index of the leader's election no-op, which ReadIndex waits for.
- ``next_node_idx``, pysyncobj's reply to AppendEntries: stamped with the term it is sent in, and
  dropped when received in another (``McpdbTransport._stale_reply``).
- ``_SyncObj__raftCommitIndex`` and ``_SyncObj__raftLog.setRaftCommitIndex``, lowered back after a
  snapshot's message raised them past what this node verified (``McpdbTransport._commit_nothing_unverified``).
- ``_SyncObj__sendAppendEntries``, wrapped, and ``_SyncObj__raftNextIndex``: a follower's next index
  is raised for the rest of one call when it has no snapshot chunk to take
  (``RaftNode.end_transfer_round``).
- ``_SyncObj__applyLogEntries``, wrapped, and ``_SyncObj__raftCommitIndex``, lowered for each call
  of it: a tick applies its committed entries in slices within a time budget
  (``mcpdb.raft.apply_slices``); the index is put back before the wrapper returns. Before it, a
  bulk entry next to apply is prepared a step per tick, read with ``_SyncObj__getEntries``
  (``RaftNode._bulk_entry_in_preparation``).
- The voters a snapshot records (``SnapshotSerializer.serialize``), taken back to its index with
  ``_SyncObj__parseChangeClusterRequest`` and ``_SyncObj__nodeClass`` (``RaftNode.voters_at``).
- ``_SyncObj__loadDumpFile``, wrapped: a follower's install keeps the entries past the snapshot, and
  the membership changes among them stay in effect (``_SyncObj__doChangeCluster``;
  ``RaftNode._wrap_load_dump_file``).
- ``_doDestroy``, overridden to drop an entry being prepared on the Raft thread as it stops.
- ``_onReadonlyNodeDisconnected``, overridden on the transport to cancel the replica's snapshot
  transfer through ``_SyncObj__serializer`` before pysyncobj forgets the replica.
- ``_SyncObj__transport``, and ``getStatus()``'s keys, read by ``RaftNode.status``.
- Each ``TcpConnection``'s send (``mcpdb.raft.wire``: its frames) and its buffers, reads and parsing
  (``mcpdb.raft.connection_buffers``: linear, and bounded per read event), replaced on the instance
  as the transport creates it.

pysyncobj has no type information: its classes are ``Any`` here, at this one boundary.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
from pysyncobj import SyncObj, SyncObjConf, SyncObjException, replicated
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.journal import APP_VERSION
from pysyncobj.node import Node
from pysyncobj.pipe_notifier import PipeNotifier
from pysyncobj.syncobj import _COMMAND_TYPE
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport
from pysyncobj.version import VERSION as PYSYNCOBJ_INSTALLED

from mcpdb.raft.apply_slices import PREPARE_STEP_S, SLICE_BYTES, apply_in_slices
from mcpdb.raft.command_lanes import BULK_BYTES, CommandLanes
from mcpdb.raft.connection_buffers import use_linear_buffers
from mcpdb.raft.disk import DiskAlarm
from mcpdb.raft.journal import RECORD_OVERHEAD, Journal, JournalSyncFailed
from mcpdb.raft.log_guard import LOG_KEYS, Reconciled, StepBack, reconcile
from mcpdb.raft.read_index import MESSAGE_TYPES, ReadIndex
from mcpdb.raft.settings import RaftSettings
from mcpdb.raft.snapshotter import CHUNK_BYTES, MAX_BACKLOG, Snapshotter
from mcpdb.raft.stall_watch import StallWatch
from mcpdb.raft.wire import use_frames
from mcpdb.store import snapshot
from mcpdb.store.commands import NAMESPACE_WITHIN, namespace_in, read_scope_of
from mcpdb.store.snapshot import check_lmdb_version
from mcpdb.store.state_machine import ContextStore

_log = logging.getLogger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"
STATUS_PERIOD_S = 0.1
KEEPALIVE = "mcpdb_keepalive"
KEEPALIVE_INTERVAL_S = 1.0  # well inside the connection timeout ``_syncobj_conf`` sets
CONNECTION_RETRY_S = 0.5  # pysyncobj reconnects to an unreachable peer this often
BIND_RETRY_S = 0.5
BIND_ATTEMPTS = 10  # a voter that cannot bind its Raft port for 5 s stops (RaftAddressUnavailable)
EXIT_STORE_FAILED = 70  # EX_SOFTWARE: the store failed under the Raft thread (see RaftNode._onTick)
EXIT_JOURNAL_SYNC_FAILED = 74  # EX_IOERR: an fsync of the journal failed (see RaftNode._onTick)
# A node that has just started waits this much longer before its first election: of two peers only
# the one with the greater address connects, so a restarted follower may hear from its leader only
# at the leader's next retry, and pysyncobj has no PreVote: a wiped follower standing at once bumped
# the term and deposed a healthy leader (measured in `mcpdb bench scale`'s catch-up phase).
STARTUP_ELECTION_GRACE_S = 2 * CONNECTION_RETRY_S
# The journal may grow to this share of the store before a snapshot (see _compact_when_large).
JOURNAL_TO_STORE = 0.5
NEVER_BY_AGE_S = 10**9
NEVER_BY_PYSYNCOBJ_COUNT = 2**62  # entries are counted in _compact_when_large, against the store

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
_NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL: (
        "the leader's queue of bulk batches is full, or this one waited its turn past half the request timeout "
        "(it holds as many as it applies in that time, half of them of one namespace)"
    ),
    FAIL_REASON.MISSING_LEADER: "no leader is elected (no quorum, or an election is under way)",
    FAIL_REASON.DISCARDED: "a new leader replaced the entry before it committed",
    FAIL_REASON.NOT_LEADER: "the node it was sent to is no longer the leader",
    FAIL_REASON.REQUEST_DENIED: (
        "the leader refused the request (its disk alarm is raised, or the entry is over its size limit)"
    ),
}


def check_pysyncobj_version() -> None:
    """Refuse to run on a pysyncobj whose internals mcpdb was not checked against."""
    if PYSYNCOBJ_INSTALLED != PYSYNCOBJ_VERSION:
        raise RuntimeError(
            f"mcpdb requires pysyncobj=={PYSYNCOBJ_VERSION} (it relies on its apply order, "
            f"journal and transport internals); found {PYSYNCOBJ_INSTALLED}"
        )


class RaftAddressUnavailable(OSError):
    """This voter cannot listen on its Raft address; it would never join its cluster."""


@dataclass(frozen=True)
class Refusal:
    """Why pysyncobj did not report success. ``reason`` is set when the entry certainly never
    entered the log (safe to retry); None when it may still commit."""

    reason: str | None


# done(result, refusal): refusal is None on success
Proposed = Callable[[Any, Refusal | None], None]
Apply = Callable[[int, bytes], dict[str, Any] | None]
# prepare(index, payload, seconds): a step of that entry's apply; whether it is whole (ContextStore.prepare)
Prepare = Callable[[int, Callable[[], bytes], float], bool]
_REGULAR = bytes([_COMMAND_TYPE.REGULAR])  # the type byte pysyncobj puts before a @replicated call's pickle
_MEMBERSHIP = bytes([_COMMAND_TYPE.MEMBERSHIP])  # ... and before a membership change's
# Committed entries a namespace's read looks through to find those it must wait for (``last_entry_for``);
# a longer backlog is waited for whole. At a few entries a tick, a read usually looks at one to five.
SCOPED_SCAN_ENTRIES = 256


def _refusal(error: int) -> Refusal | None:
    return None if error == FAIL_REASON.SUCCESS else Refusal(_NOT_APPLIED.get(error))


def _snapshot_path(settings: RaftSettings) -> str:
    return os.path.join(settings.data_dir, "raft.snapshot")


def _syncobj_conf(settings: RaftSettings, on_state_changed: Callable[[int, int], None]) -> Any:
    os.makedirs(settings.data_dir, exist_ok=True)
    return SyncObjConf(
        password=settings.password,
        journalFile=os.path.join(settings.data_dir, "raft.journal"),
        fullDumpFile=_snapshot_path(settings),
        # Replaced by SnapshotSerializer when the transport is built; given here
        # so that pysyncobj neither forks nor pickles its own state.
        serializer=_unused_serializer,
        deserializer=_unused_serializer,
        logCompactionBatchSize=CHUNK_BYTES,
        # pysyncobj's batching: no AppendEntries per proposal; RaftNode._send_appended sends each
        # tick's new entries (and a new commit index) in one message per follower instead.
        appendEntriesUseBatch=True,
        appendEntriesPeriod=settings.heartbeat_period,
        # From this size pysyncobj splits an entry into a chunked "transmission", a path the log
        # guard does not reconcile: Replication.propose refuses an entry that would reach it.
        appendEntriesBatchSizeBytes=settings.entry_limit,
        autoTickPeriod=settings.tick_period,
        raftMinTimeout=settings.election_timeout[0],
        raftMaxTimeout=settings.election_timeout[1],
        # A leader cut off from the majority steps down after this long
        # (pysyncobj's default is 30 s, during which writes only time out).
        leaderFallbackTimeout=settings.election_timeout[1],
        connectionTimeout=max(3.5, settings.election_timeout[1]),
        connectionRetryTime=CONNECTION_RETRY_S,
        commandsWaitLeader=False,
        # pysyncobj retries a failed bind forever by default: a node whose Raft port is taken
        # would run, never join and never say why. RaftNode waits for the bind instead.
        bindRetryTime=BIND_RETRY_S,
        maxBindRetries=BIND_ATTEMPTS,
        dynamicMembershipChange=True,
        # pysyncobj's own triggers are off: by age, under a trickle of writes it rewrote a multi-GB
        # store every 300 s (its default) for a journal of a few MB; by a fixed entry count, every
        # --compaction-entries probe writes. _compact_when_large counts bytes and entries instead.
        logCompactionMinEntries=NEVER_BY_PYSYNCOBJ_COUNT,
        logCompactionMinTime=NEVER_BY_AGE_S,
        sendBufferSize=1 << 20,
        recvBufferSize=1 << 20,
        onStateChanged=on_state_changed,
    )


def _hooked(connection: TcpConnection) -> TcpConnection:
    """A connection the transport made, sending mcpdb's frames through linear, bounded buffers."""
    return use_linear_buffers(use_frames(connection))


def carries_entries(message: Any) -> bool:
    """An AppendEntries with log entries in it (not a heartbeat, not a part of a chunked entry)."""
    return isinstance(message, dict) and message.get("type") == "append_entries" and bool(message.get("entries"))


def snapshot_due(journal: int, store: int, floor: int) -> bool:
    """Whether the journal outgrew both ``floor`` and ``JOURNAL_TO_STORE`` of the store, in one
    measure: bytes against the store's bytes, or entries against the store's records."""
    return journal > max(floor, JOURNAL_TO_STORE * store)


def _unused_serializer(*_: Any) -> Any:
    raise AssertionError("pysyncobj's serializer was replaced by SnapshotSerializer")


class SnapshotSerializer:
    """pysyncobj's ``Serializer`` interface (its names) over ``Snapshotter``.

    pysyncobj calls ``serialize`` for its last applied entry and polls ``checkSerializing`` every
    tick; on success it drops the journal up to the id given to ``serialize``, as after its own
    forked child. Installed in place of ``SyncObj.__serializer`` from the transport's constructor,
    before the Raft thread starts (the journal is swapped the same way).
    """

    def __init__(
        self,
        snapshots: Snapshotter,
        backlog: Callable[[Node], int],
        after_install: Callable[[], None],
        nothing_to_send: Callable[[Node], None],
        voters_at: Callable[[int, set[Node]], set[Node]],
        applied: Callable[[], int],
    ):
        self._snapshots = snapshots
        self._applied = applied
        self._backlog = backlog
        self._after_install = after_install
        self._nothing_to_send = nothing_to_send
        self._voters_at = voters_at
        self._id: int | None = None

    def checkSerializing(self) -> tuple[int, int | None]:  # noqa: N802 - pysyncobj's names
        if not self._snapshots.busy:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        done = self._snapshots.finished()
        if done is None:
            return SERIALIZER_STATE.SERIALIZING, self._id
        return (SERIALIZER_STATE.SUCCESS if done.error is None else SERIALIZER_STATE.FAILED), self._id

    def serialize(self, data: tuple[Any, ...], id: int) -> None:  # noqa: A002 - pysyncobj's name
        """data: pysyncobj's own state (None with a serializer), its last applied entry, the one
        before, and the voters as it holds them now, which ``voters_at`` takes back to that entry."""
        self._id = id
        _, last, previous, voters = data
        self._snapshots.start((last, previous, self._voters_at(last[1], voters)))

    def deserialize(self) -> tuple[Any, ...]:
        return (None, *self._snapshots.install(self._after_install))

    def getTransmissionData(self, node: Node) -> tuple[bytes, bool, bool] | None:  # noqa: N802
        chunk = self._snapshots.chunk(node, self._backlog(node))
        if chunk is None:
            self._nothing_to_send(node)
        return chunk

    def setTransmissionData(self, data: tuple[bytes, bool, bool] | None) -> bool:  # noqa: N802
        return self._snapshots.receive(data, self._applied())

    def cancelTransmisstion(self, node: Node) -> None:  # noqa: N802 - pysyncobj's spelling
        self._snapshots.cancel(node)


def align_with_snapshot(journal: Journal, snapshot_path: str) -> None:
    """Compact the journal to the snapshot if a stop came between the two.

    At start-up pysyncobj keeps the journal only if it begins exactly with the snapshot's last two
    entries, and otherwise replaces it with just those two: entries after the snapshot, which this
    node may have acknowledged, would be dropped. The snapshot's rename and the journal's
    compaction happen in one Raft tick, but a crash can fall between them.
    """
    if not os.path.exists(snapshot_path) or len(journal) < 2:
        return
    last, previous = snapshot.read_raft_data(snapshot_path)[:2]
    position = previous[1] - journal[0][1]
    if (
        0 < position < len(journal) - 1
        and tuple(journal[position]) == tuple(previous)
        and tuple(journal[position + 1]) == tuple(last)
    ):
        _log.warning("journal compacted to the snapshot at index %d at start-up (stopped in between)", last[1])
        journal.deleteEntriesTo(position)


def _swap_journal(node: Any, durable: bool) -> Journal:
    """Replace pysyncobj's FileJournal with ``Journal`` on the same file, and re-read the term, vote
    and commit index pysyncobj took from it (once the meta file is in Journal's format, FileJournal
    cannot read it and would have reported term 0 and no vote)."""
    old = node._SyncObj__raftLog
    old._destroy()
    journal = Journal(node.conf.journalFile, APP_VERSION, durable, node._settings.disk_reserve_bytes)
    align_with_snapshot(journal, node.conf.fullDumpFile)
    node._SyncObj__raftLog = journal
    # Empty only after a stop inside a snapshot's install (between the journal's clear and pysyncobj's
    # writing the snapshot's two entries): pysyncobj then starts it again from the snapshot.
    node._SyncObj__raftCurrentTerm = max(journal.getCurrentTerm(), journal[-1][2] if len(journal) else 0)
    node._SyncObj__votedForNodeId = journal.getVotedForNodeId()
    node._SyncObj__raftCommitIndex = journal.getRaftCommitIndex()
    return journal


class McpdbTransport(TCPTransport):  # type: ignore[misc]  # pysyncobj is untyped
    """TCP transport with mcpdb's hooks into the Raft message flow.

    pysyncobj lets the application choose the transport class; mcpdb uses it to

    - reconcile incoming AppendEntries with the local log first, so that
      pysyncobj never truncates entries that match the leader's (``log_guard``),
      and let a snapshot's messages commit none of this node's own entries
      (``_commit_nothing_unverified``);
    - carry ReadIndex messages (``read_index``) on the same connections, never
      handing them to pysyncobj;
    - fsync the journal before a follower acknowledges entries when the node is
      durable: acknowledgements produced while one poll delivers many
      AppendEntries are held and share one fsync (``RaftNode``'s poll releases them);
    - frame what it sends with ``wire.frame`` (pickle protocol 5, compressed only when large);
    - send each peer a tiny keepalive once a second. pysyncobj closes a
      connection that has read nothing for ``connectionTimeout`` the next time it
      *sends* on it, dropping that message. Two followers never talk while a
      leader is up, so without keepalives the first RequestVote after the leader
      dies was lost and failover took a second election round.
    """

    durable: bool = True
    guard_log: bool = True
    read_index: ReadIndex | None = None
    reconciled_messages = 0
    deferred_append_entries = 0  # batches dropped for a backed-up connection (_connection_backed_up)

    def __init__(self, syncObj: Any, selfNode: Node | None, otherNodes: Any) -> None:  # noqa: N803
        super().__init__(syncObj, selfNode, otherNodes)
        self._held_acks: dict[Node, dict[str, Any]] = {}
        self._next_keepalive = 0.0
        self.step_back = StepBack()  # this node's answers as a follower to messages past its log
        self.journal: Journal | None = None
        syncObj.addOnTickCallback(self._send_keepalives)
        if isinstance(syncObj, RaftNode):
            # The transport is built inside SyncObj.__init__ after the journal and the serializer
            # and before the Raft thread starts, so these swaps race nothing. (A bare SyncObj keeps
            # pysyncobj's parts: the log guard's tests drive one without a thread or files.)
            syncObj._SyncObj__serializer = SnapshotSerializer(
                syncObj.snapshots,
                self._backlog,
                syncObj.after_install,
                syncObj.end_transfer_round,
                syncObj.voters_at,
                lambda: syncObj.raftLastApplied,
            )
            self.journal = _swap_journal(syncObj, self.durable)
            syncObj.addOnTickCallback(self.journal.sync)
            syncObj.reset_election_timer(grace=STARTUP_ELECTION_GRACE_S)

    def addNode(self, node: Node) -> None:  # noqa: N802 - pysyncobj's name
        super().addNode(node)
        if node in self._connections:  # an outgoing connection (the higher address connects)
            _hooked(self._connections[node])

    def _onNewIncomingConnection(self, conn: TcpConnection) -> None:  # noqa: N802 - pysyncobj's name
        super()._onNewIncomingConnection(_hooked(conn))

    def _onReadonlyNodeDisconnected(self, node: Node) -> None:  # noqa: N802 - pysyncobj's name
        """Stop a snapshot transfer to a read-only replica that disconnected. pysyncobj cancels a
        voter's transfer in its sending loop (an unconnected voter is still listed there) but drops a
        replica from every list at once, so its transfer was never cancelled: the open file stayed
        behind, and the transfer counted as under way, holding back this node's snapshots for
        ``TRANSFER_HOLD_S`` (an autoscaled worker stopped mid-transfer is such a replica)."""
        self._syncObj._SyncObj__serializer.cancelTransmisstion(node)
        super()._onReadonlyNodeDisconnected(node)

    def _connection_backed_up(self, node: Node, message: Any) -> bool:
        """Drop AppendEntries carrying entries to a peer whose connection already holds
        ``MAX_BACKLOG`` unsent bytes, as a lossy network would.

        pysyncobj sends a lagging follower its backlog for up to a heartbeat period on every call
        (at least once a tick), pickling and compressing each batch into one
        send buffer, however far the follower is from reading it: measured at 1 M contexts, a
        wiped follower back from its snapshot install took the leader's Raft thread for seconds at
        a time, and every client write timed out for 28 s. A dropped batch leaves a gap the
        follower reports at the next message (heartbeats carry prevLogIdx too), and pysyncobj
        rewinds that follower's next index, so the backlog drains at the rate the follower reads.
        Heartbeats and chunked transmissions are never dropped (a missing part would corrupt the
        reassembled entry)."""
        if not carries_entries(message) or self._backlog(node) <= MAX_BACKLOG:
            return False
        self.deferred_append_entries += 1
        return True

    def _backlog(self, node: Node) -> int:
        """Bytes queued on the connection to ``node`` and not yet sent."""
        connection = self._connections.get(node)
        return int(connection.getSendBufferSize()) if connection is not None else 0

    def _send_keepalives(self) -> None:
        now = time.monotonic()
        if now < self._next_keepalive:
            return
        self._next_keepalive = now + KEEPALIVE_INTERVAL_S
        for node in list(self._connections):
            self.send(node, {"type": KEEPALIVE})

    def _onMessageReceived(self, node: Node, message: Any) -> None:  # noqa: N802 - pysyncobj's name
        if isinstance(message, dict) and message.get("type") == KEEPALIVE:
            return  # its arrival already refreshed the connection's read time
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and self._stale_reply(message):
            return
        if isinstance(message, dict) and message.get("type") in MESSAGE_TYPES:
            if self.read_index is not None:
                self.read_index.on_message(node, message)
            return
        if isinstance(message, dict) and message.get("type") == "apply_command" and self._disk_alarm():
            # A proposal forwarded to this node as leader: it cannot store it.
            if "request_id" in message:
                self.send(
                    node,
                    {
                        "type": "apply_command_response",
                        "request_id": message["request_id"],
                        "error": FAIL_REASON.REQUEST_DENIED,
                    },
                )
            return
        if not self.guard_log or not isinstance(message, dict) or message.get("type") != "append_entries":
            super()._onMessageReceived(node, message)
            return
        if "prevLogIdx" not in message:
            self._commit_nothing_unverified(node, message)
            return
        log = self._syncObj._SyncObj__raftLog
        first_index, last_index = log[0][1], log[-1][1]
        term = self._syncObj.raftCurrentTerm

        def term_at(index: int) -> int:
            return int(log[index - first_index][2])

        result = self.step_back.answer(
            message, term, first_index, last_index, term_at, self._syncObj.raftCommitIndex
        ) or reconcile(message, term, first_index, last_index, term_at)
        if result.message is not message:
            self.reconciled_messages += 1
        result = self._within_reserved_room(result, first_index, last_index, term_at)
        taken = result.message
        matched = "prevLogIdx" in taken and first_index <= taken["prevLogIdx"] <= last_index
        matched = matched and term_at(taken["prevLogIdx"]) == taken["prevLogTerm"]
        super()._onMessageReceived(node, taken)
        if matched and taken["term"] >= term:
            self.step_back.accepted(taken["prevLogIdx"] + len(taken.get("entries", [])))
        if result.ack_through is not None:
            self.send(
                node,
                {"type": "next_node_idx", "next_node_idx": result.ack_through + 1, "reset": False, "success": True},
            )
        if result.step_back_to is not None:
            # The cap kept this node's commit index; the leader's is still what it said (lag, readiness).
            self._syncObj._SyncObj__leaderCommitIndex = message["commit_index"]
            self.send(
                node,
                {"type": "next_node_idx", "next_node_idx": result.step_back_to, "reset": True, "success": False},
            )

    def _stale_reply(self, message: dict[str, Any]) -> bool:
        """Whether a follower's reply to AppendEntries was sent in another term than this node's.

        Raft's replies carry their term and a leader drops one that is not its current term's
        (Figure 2): a reply says the follower's log matched the leader's *of that term*. pysyncobj's
        ``next_node_idx`` carries none, and a leader raised a follower's match index from any success
        it received while leading: a follower's acknowledgement of a deposed leader's entries, late
        (a slow link, or its fsync before the release), counted for that node's write at the same
        indexes once it led again, and committed it on a minority (``tests/test_raft_stale_acks.py``,
        five voters). ``send`` stamps each reply with the term it was made in; a reply without one
        (a node not yet upgraded) is taken as before."""
        return "term" in message and message["term"] != self._syncObj.raftCurrentTerm

    def _commit_nothing_unverified(self, node: Node, message: dict[str, Any]) -> None:
        """Hand pysyncobj a snapshot's message (a chunk, or a heartbeat while the transfer is paced)
        without letting it commit this node's own entries. Such a message carries the leader's commit
        index and nothing about this node's log, yet pysyncobj raises the commit index to the lesser
        of that and its last entry for it: a deposed leader's entries that never committed (proposed
        while it was cut off, overtaken by a leader that has since compacted past them) were applied,
        their writers told they succeeded, and then replaced by the snapshot: acknowledged writes
        lost (``tests/test_snapshot_commit_guard.py``). An installed snapshot is committed through its
        index; anything else waits for an AppendEntries whose previous entry matched."""
        syncobj = self._syncObj
        committed = syncobj.raftCommitIndex
        super()._onMessageReceived(node, message)
        allowed = max(committed, syncobj.raftLastApplied)
        if syncobj.raftCommitIndex > allowed:
            syncobj._SyncObj__raftCommitIndex = allowed
            syncobj._SyncObj__raftLog.setRaftCommitIndex(allowed)

    def _disk_alarm(self) -> bool:
        return isinstance(self._syncObj, RaftNode) and self._syncObj.disk.raised

    def _within_reserved_room(
        self, result: Reconciled, first_index: int, last_index: int, term_at: Callable[[int], int]
    ) -> Reconciled:
        """Entries the journal has no reserved room for are not taken (nor acknowledged): the
        message still counts as the leader's heartbeat, and commits only what this log already
        verifiably shares with the leader. The leader re-sends them once space returns."""
        entries = result.message.get("entries")
        journal = self.journal
        if not entries or journal is None:
            return result
        if journal.make_room(sum(len(command) + RECORD_OVERHEAD for command, _, _ in entries)):
            return result
        message = result.message
        prev_index, prev_term = message.get("prevLogIdx"), message.get("prevLogTerm")
        shared = (
            prev_index
            if prev_index is not None and first_index <= prev_index <= last_index and term_at(prev_index) == prev_term
            else self._syncObj.raftCommitIndex
        )
        stripped = {key: value for key, value in message.items() if key not in LOG_KEYS}
        stripped["commit_index"] = min(message["commit_index"], shared)
        return Reconciled(stripped)

    def send(self, node: Node, message: Any) -> bool:
        if isinstance(message, dict) and message.get("type") == "next_node_idx":
            message = {**message, "term": self._syncObj.raftCurrentTerm}  # see _stale_reply
        if self._connection_backed_up(node, message):
            return False
        if not self.durable or self.journal is None:
            return bool(super().send(node, message))
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success"):
            # Hold the acknowledgement until the entries it covers are on disk.
            # One poll can deliver many AppendEntries: they share one fsync,
            # and only the newest acknowledgement per leader matters.
            self._held_acks[node] = message
            return True
        if node in self._held_acks:
            self.release_acks()  # keep this node's messages in order
        return bool(super().send(node, message))

    def release_acks(self) -> None:
        """fsync the journal, then send the acknowledgements held since the last release."""
        if not self._held_acks:
            return
        assert self.journal is not None  # acknowledgements are only held with a journal
        self.journal.sync()
        held, self._held_acks = self._held_acks, {}
        for node, message in held.items():
            super().send(node, message)


def transport_class(durable: bool, guard_log: bool = True, read_index: ReadIndex | None = None) -> type[McpdbTransport]:
    """A transport class with the settings baked in (pysyncobj instantiates it itself)."""
    return type(
        "McpdbTransport", (McpdbTransport,), {"durable": durable, "guard_log": guard_log, "read_index": read_index}
    )


class RaftNode(SyncObj):  # type: ignore[misc]  # pysyncobj is untyped
    """The pysyncobj object of one node: one replicated method, which hands entries to ``apply``.

    Implements ``read_index.RaftView`` for its ReadIndex.
    """

    _SyncObj__sendAppendEntries: Callable[[], None]  # pysyncobj's, wrapped (_wrap_send_append_entries)
    _SyncObj__applyLogEntries: Callable[[], bool]  # pysyncobj's, wrapped (_wrap_apply_log_entries)
    _SyncObj__loadDumpFile: Callable[[bool], None]  # pysyncobj's, wrapped (_wrap_load_dump_file)

    def __init__(self, settings: RaftSettings, store: ContextStore, apply: Apply, prepare: Prepare) -> None:
        check_pysyncobj_version()
        check_lmdb_version()
        self._settings = settings
        self._store = store
        self._apply = apply
        self._prepare = prepare
        self._deferred: collections.deque[Callable[[], object]] = collections.deque()
        self._commit_listeners: list[Callable[[], None]] = []
        self._polling = False
        self._notify_pipe: Callable[[], None] = lambda: None
        # The transport pysyncobj builds during SyncObj.__init__ gets the read
        # index in its class; ReadIndex only sends once the Raft thread runs.
        self.read_index = ReadIndex(self, self._send, self.wake)
        # pysyncobj's getStatus() iterates dicts its thread mutates: other
        # threads read this sample, refreshed by the Raft thread instead.
        self._status_sample: dict[str, Any] = {}
        self._status_taken = 0.0
        self._last_tick_began = time.monotonic()
        self.stalls = 0  # ticks that began more than an election timeout after the previous one, any role
        self.stall_watch = StallWatch()
        self.leader_changes = 0  # times a leader other than the last one known was seen (the first counts)
        self._last_leader: Any = None
        self.disk = DiskAlarm(
            settings.data_dir,
            lambda: self._transport.journal,
            lambda: (store.data_file(), store.stats()["size_bytes"]),
            settings.disk_reserve_bytes,
        )
        self.snapshots = Snapshotter(_snapshot_path(settings), store, self.disk.snapshot_fits)
        self._paused_next_index: dict[Node, int] = {}  # see end_transfer_round
        super().__init__(
            settings.self_addr,
            settings.peers,
            _syncobj_conf(settings, self._on_state_changed),
            transportClass=transport_class(settings.durable, read_index=self.read_index),
        )
        self._transport: McpdbTransport = self._SyncObj__transport
        self._sent_through = (0, 0, 0)  # (term, last log index, commit index) the last _send_appended sent
        self._bulk_index = 0  # as leader, the index of the bulk entry this node appended last
        # committed index -> read_scope_of its entry (None for every other entry): a committed index's
        # entry never changes, and each waiting read looks at the same ones again every tick
        self._read_scopes: dict[int, str | None] = {}
        self._lanes = CommandLanes(
            self._SyncObj__conf.commandsQueueSize,
            self._isLeader,
            self._holds_bulk,
            self._took_bulk,
            lambda callback: self._SyncObj__callErrCallback(FAIL_REASON.QUEUE_FULL, callback),
            namespace_in,
            wait_budget_s=settings.request_timeout / 2,
        )
        self._SyncObj__commandsQueue = self._lanes
        self._wrap_poll()
        self._wrap_send_append_entries()
        self._wrap_apply_log_entries()
        self._wrap_load_dump_file()
        # First, before the transport's journal fsync: followers write the entries while this node does.
        self._SyncObj__onTickCallbacks.insert(0, self._send_appended)
        self.addOnTickCallback(self._commit_and_notify)
        self.addOnTickCallback(self.disk.check)
        self.addOnTickCallback(self._compact_when_large)
        self._wait_bound(settings.self_addr)
        self.stall_watch.start()

    def _wait_bound(self, address: str | None) -> None:
        """Return once the Raft port is bound (a voter's; a non-voter listens on none), or stop
        the Raft thread and raise RaftAddressUnavailable."""
        if address is None:
            return
        try:
            self.waitBinded()
        except SyncObjException:
            self.destroy()
            raise RaftAddressUnavailable(
                f"cannot listen on the Raft address {address} (the port is in use, or one this user may not bind) "
                f"after {BIND_ATTEMPTS} tries over {BIND_ATTEMPTS * BIND_RETRY_S:g} s"
            ) from None

    def _on_state_changed(self, old: int, new: int) -> None:
        # Raft thread; pysyncobj calls it before it raises the term for an election.
        if _ROLES.get(old) == "leader":
            self.snapshots.drop_transfers()
        self._bulk_index = 0  # an entry of an earlier term may never be applied: hold nothing for it
        self._lanes.role_changed()
        if _ROLES.get(new) == "leader":
            # pysyncobj sets the new no-op's index only after appending it: until then (or if the
            # append fails on a full disk) ReadIndex must not count an earlier term's no-op.
            self._SyncObj__noopIDx = None
        if _ROLES.get(new) == "candidate":
            _log.info("election timeout: standing for term %d", self.raftCurrentTerm + 1)
        else:
            _log.info("raft role %s -> %s (term %d)", _ROLES.get(old, old), _ROLES.get(new, new), self.raftCurrentTerm)

    @replicated  # type: ignore[untyped-decorator]  # pysyncobj is untyped
    def _apply_entry(self, payload: bytes) -> dict[str, Any] | None:
        return self._apply(self.raftLastApplied + 1, payload)

    def _wrap_poll(self) -> None:
        """Wake pysyncobj's thread only when it is blocked in poll, never let it block with work
        queued, and release the transport's held acknowledgements after each poll.

        Proposals (``_applyCommand``), read-index requests and deferred actions wake the poll
        through a pipe (pysyncobj makes none when it batches). A write to it and the GIL hand-off it
        causes cost about as much as the rest of a read. The flag is set before the thread looks for
        work, so a producer that queues work after that look sees the flag and writes to the pipe:
        no wake-up is lost. A lone voter's leader also polls without waiting while it holds entries
        it has not committed: nobody else's answer would wake it, and it commits them at the next
        tick (it waited the 50 ms poll on every write). Installed after SyncObj.__init__, while the
        new thread sleeps before its first tick.
        """
        self._notify_pipe = PipeNotifier(self._poller).notify
        commands_ready = self._lanes.has_ready
        poll = self._poller.poll
        release_acks = self._transport.release_acks

        def poll_unless_work(timeout: float) -> None:
            self._polling = True
            if (
                self._deferred
                or commands_ready()
                or self.read_index.has_incoming()
                or self._commits_alone()
                or self.raftLastApplied < self.raftCommitIndex  # a slice of them left for the next tick
            ):
                timeout = 0
            try:
                poll(timeout)
                release_acks()
            finally:
                self._polling = False

        self._poller.poll = poll_unless_work

    def _send(self, node: Hashable, message: dict[str, Any]) -> bool:
        return self._transport.send(node, message)

    def end_transfer_round(self, node: Node) -> None:
        """End pysyncobj's sending loop for ``node``, which is being sent a snapshot and has no chunk
        to take now (the transfer is paced, its connection backed up, or a newer snapshot is being
        written).

        ``SyncObj.__sendAppendEntries`` asks such a follower for chunks in a loop that ends only when
        its next index passes the log's last, the follower disconnects, or a heartbeat period has gone
        by; a chunk it may not have does not end it. So each call while a transfer was paced spun
        the Raft thread for the whole 50 ms, sending the follower an empty chunk message each turn:
        with the thread spinning most of the time, every write took 100-300 ms for the 150 s a
        6.6 GB snapshot took to stream (``mcpdb bench scale --contexts 3000000``). Raising the
        follower's next index past the log ends the loop after this turn; the wrapper around the
        method (``_wrap_send_append_entries``) puts the index back as soon as it returns, so nothing
        else ever reads the raised one."""
        next_index = self._SyncObj__raftNextIndex
        self._paused_next_index.setdefault(node, next_index[node])
        next_index[node] = self._SyncObj__getCurrentLogIndex() + 1

    def _wrap_send_append_entries(self) -> None:
        send_append_entries = self._SyncObj__sendAppendEntries

        def send_then_restore() -> None:
            try:
                send_append_entries()
            finally:
                next_index = self._SyncObj__raftNextIndex
                for node, index in self._paused_next_index.items():
                    if node in next_index:  # a replica that disconnected meanwhile was dropped from it
                        next_index[node] = index
                self._paused_next_index.clear()

        self._SyncObj__sendAppendEntries = send_then_restore

    def _holds_bulk(self) -> bool:
        """Whether this leader's last bulk entry is yet to be applied here (``command_lanes``)."""
        # An append that failed after the take (a full journal) left no entry at that index: hold nothing then.
        return self.raftLastApplied < self._bulk_index <= self._SyncObj__getCurrentLogIndex() and bool(self._isLeader())

    def _took_bulk(self) -> None:
        if self._isLeader():  # it is appended next; a follower forwards it instead
            self._bulk_index = self._SyncObj__getCurrentLogIndex() + 1

    def voters_at(self, index: int, voters: set[Node]) -> set[Node]:
        """``voters`` (this node's configuration now) as it was once ``index`` was applied: the
        membership changes appended after it, in effect from their append and rolled back if a new
        leader replaces them, undone. pysyncobj recorded the voters of the moment in a snapshot, so a
        change appended but never committed survived its rollback there, and came back with a restart
        from that snapshot, or with the snapshot sent to a follower (an audit reproduced it:
        ``tests/test_snapshot_membership.py``)."""
        at = set(voters)
        for request in self._membership_changes(range(self._SyncObj__getCurrentLogIndex(), index, -1)):
            node = request[2] if len(request) >= 3 else self._SyncObj__nodeClass(request[1])
            if request[0] == "add":
                at.discard(node)
            elif request[0] == "rem":
                at.add(node)
        return at

    def _membership_changes(self, indexes: Iterable[int]) -> Iterator[list[Any]]:
        """The membership changes (pysyncobj's ``['add' | 'rem', node id, node]``) among the journal's
        entries at ``indexes``, in that order; only a change's first byte is read for the others."""
        journal = self._SyncObj__raftLog
        for index in indexes:
            if journal.command_head(index, 1) == _MEMBERSHIP:
                yield self._SyncObj__parseChangeClusterRequest(journal.command_head(index, 1 << 20))

    def after_install(self) -> None:
        """Once a snapshot is in the store (a leader's, or this node's own at start-up): the election
        timer restarts (the install took a while, and the leader is alive), and the journal is
        compacted to the snapshot if it holds its last two entries, so that pysyncobj keeps what
        follows them (``_wrap_load_dump_file``). Only now: an install that fails leaves the journal
        whole."""
        self.reset_election_timer()
        align_with_snapshot(self._SyncObj__raftLog, _snapshot_path(self._settings))

    def _wrap_load_dump_file(self) -> None:
        """Install a leader's snapshot keeping this node's entries past it, when its journal holds the
        snapshot's last two entries (Raft, Figure 13: "retain log entries following it").

        pysyncobj installs with ``clearJournal=True``: every entry went, including ones past the
        snapshot that this node had acknowledged and its leader went on counting (a match index only
        rises), so an entry could be committed, its writer told so, and be held by the leader alone
        (an audit reproduced it: ``tests/test_snapshot_install.py``). ``after_install`` compacts the
        journal to the snapshot, as at start-up after a stop between a snapshot's rename and the
        compaction; pysyncobj then keeps a journal that begins with those two entries and clears one
        that does not, as before. The snapshot's voters replace the configuration, so the membership
        changes in the entries kept are put back in effect, as pysyncobj does when it appends them
        (Raft: a node uses the latest configuration in its log, committed or not)."""
        load_dump_file = self._SyncObj__loadDumpFile

        def keeping_what_follows(clearJournal: bool) -> None:  # noqa: N803 - pysyncobj's name
            load_dump_file(False)  # keeps a journal that begins with the snapshot's two entries
            kept = range(self.raftLastApplied + 1, self._SyncObj__getCurrentLogIndex() + 1)
            for request in self._membership_changes(kept):
                self._SyncObj__doChangeCluster(request)

        self._SyncObj__loadDumpFile = keeping_what_follows

    def _wrap_apply_log_entries(self) -> None:
        """Apply a tick's committed entries in slices, within a time budget (``apply_slices``); a
        leader about to apply a bulk entry's worth first tells its followers the commit index.

        pysyncobj's leader sends the commit index it advanced only after applying the entries, so a
        follower began a bulk entry's apply when its leader had finished it, and a write behind it
        waited for the two applies one after the other (the follower reads no socket, so acknowledges
        nothing, while it applies): at 300 k contexts with three loaders the probe's p50 was about two
        batches' apply. Told first, the followers apply on the other core meanwhile. Only before
        ``BULK_BYTES`` or more: for small writes, one AppendEntries per tick sends the new entries and
        the commit index together (a second message per tick cost CPU per write)."""
        apply_log_entries = self._SyncObj__applyLogEntries

        def set_commit_index(index: int) -> None:
            self._SyncObj__raftCommitIndex = index

        def apply_a_share() -> bool:
            if self._isLeader() and self._SyncObj__raftLog.reaches(
                self.raftLastApplied + 1, self._SyncObj__raftCommitIndex, BULK_BYTES
            ):
                self._send_appended()
            if self._bulk_entry_in_preparation():
                return False
            apply_in_slices(
                apply_log_entries,
                self._SyncObj__raftCommitIndex,
                set_commit_index,
                lambda: self.raftLastApplied,
                lambda first, last: self._SyncObj__raftLog.slice_end(first, last, SLICE_BYTES),
                lambda index: self._SyncObj__raftLog.reaches(index, index, BULK_BYTES),
            )
            return False  # with batched AppendEntries pysyncobj never sends because of an apply

        self._SyncObj__applyLogEntries = apply_a_share

    def _bulk_entry_in_preparation(self) -> bool:
        """Take one step of the next entry's apply if it is a bulk one (``apply_slices``); whether it
        still has steps to go, and nothing applies this tick.

        The entry's payload is the one argument of the ``@replicated`` call pysyncobj pickled after
        its type byte; pysyncobj unpickles the same bytes to apply it (``SyncObj.__doApplyCommand``)."""
        index = self.raftLastApplied + 1
        if index > self._SyncObj__raftCommitIndex or not self._SyncObj__raftLog.reaches(index, index, BULK_BYTES):
            return False
        command = self._SyncObj__getEntries(index, 1)[0][0]
        if command[:1] != _REGULAR:  # a membership change or a no-op: pysyncobj applies it
            return False
        return not self._prepare(index, lambda: pickle.loads(command[1:])[1][0], PREPARE_STEP_S)

    # ------------------------------------------------------- thread hand-offs
    def wake(self) -> None:
        """Called from any thread after queueing work for the Raft thread."""
        if self._polling:
            try:
                self._notify_pipe()
            except BlockingIOError:  # the pipe is full of wake-ups the poll has yet to read: it will wake
                pass

    def defer(self, notify: Callable[[], object]) -> None:
        """Run ``notify`` in the Raft thread, after the entries applied so far are committed to LMDB."""
        self._deferred.append(notify)

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` in the Raft thread each time applied entries were committed to LMDB."""
        self._commit_listeners.append(listener)

    def call_in_raft_thread(self, action: Callable[[], object]) -> None:
        """pysyncobj is not thread-safe beyond its command queue: run ``action`` on its thread."""
        self._deferred.append(action)
        self.wake()

    def _compact_when_large(self) -> None:
        """Snapshot once the journal holds ``--compaction-bytes`` or ``JOURNAL_TO_STORE`` of the
        store's bytes, whichever is more, or ``--compaction-entries`` or that share of the store's
        records, whichever is more.

        A snapshot writes the whole store, so with a fixed trigger each journal byte cost
        store/trigger bytes of snapshot: at 1 M contexts (2.2 GB) about 9 for 256 MiB, and three
        nodes writing 2 GB snapshots every 40 s saturated the disk that every journal fsync waits on
        (measured: probe writes of 0.5-1.4 s through each snapshot, commits blocked in the block
        layer's queue); a fixed entry count was worse, since small writes reach it with a tiny
        journal (the bench's probe, 50 writes/s, started a 2 GB snapshot every 20 s). Proportional,
        as an LSM tree's size ratio, a journal byte costs at most 1 / JOURNAL_TO_STORE snapshot
        bytes however large the store grows, the journal stays a bounded share of the disk, and
        its entries (each ~150 bytes of heap in the journal's index) a bounded share of the
        store's records (docs/ARCHITECTURE.md, "Disk").
        """
        journal, settings = self._transport.journal, self._settings
        if journal is None or self.snapshots.busy:
            return
        entries = len(journal)
        if journal.bytes <= settings.compaction_bytes and entries <= settings.compaction_min_entries:
            return  # below both floors nothing is due: the store's size is not read every tick
        stats = self._store.stats()
        if snapshot_due(journal.bytes, stats["size_bytes"], settings.compaction_bytes) or snapshot_due(
            entries, stats["contexts"] + stats["turns"], settings.compaction_min_entries
        ):
            self.forceLogCompaction()

    def _commits_alone(self) -> bool:
        """Whether this node leads no other voter and holds entries it has yet to commit."""
        log = self._SyncObj__raftLog
        return (
            not self._SyncObj__otherNodes
            and self._isLeader()
            and self._SyncObj__getCurrentLogIndex() > self.raftCommitIndex
            # Raft commits only entries of the leader's term (earlier ones with them): a lone leader whose
            # last entry is older (its election no-op failed on a full disk) must not spin on it.
            and log[-1][2] == self.raftCurrentTerm
        )

    def _send_appended(self) -> None:
        """As leader, send what this tick changed in one AppendEntries per follower: the entries it
        appended, and the commit index it advanced (followers apply, and serve reads, from it).

        pysyncobj unbatched sends one message per proposal, each pickled, framed and written to
        every follower, and each answered: measured under the kv write load, 0.25-0.27 s of CPU per
        1,000 writes per node against 0.21-0.23 s this way. Batched, it sends only at the next
        heartbeat or the next tick's start, after this node's fsync and a poll; here the
        followers get the entries before this node's fsync (the transport's tick callback, after
        this one), so the two disks write at once. Safe: this node counts itself toward a commit
        only at a later tick, after that fsync."""
        if not self._isLeader():
            return
        through = (self.raftCurrentTerm, self._SyncObj__getCurrentLogIndex(), self.raftCommitIndex)
        if through != self._sent_through:
            self._sent_through = through
            self._SyncObj__sendAppendEntries()

    def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None:  # noqa: N802, N803
        """pysyncobj's queueing of a proposal (a write, a membership change), then a wake-up. One
        forwarded by a node with a larger ``--max-body-bytes`` than this one's is refused here if its
        entry would reach this node's ``entry_limit`` (``Replication.propose`` refuses a local one)."""
        if len(command) + 1 >= self._settings.entry_limit:
            self._SyncObj__callErrCallback(FAIL_REASON.REQUEST_DENIED, callback)
            return
        super()._applyCommand(command, callback, commandType)
        self.wake()

    def _commit_and_notify(self) -> None:
        # Group commit: pysyncobj applied this tick's entries into one open
        # LMDB transaction; commit it, then release the waiters (writes and
        # reads whose read index is now applied), so nobody is told "done"
        # before a read on this node can see the result.
        self._store.commit()
        if self._store.take_commits():
            for listener in self._commit_listeners:
                listener()
        self.read_index.on_tick()
        while self._deferred:
            self._deferred.popleft()()
        now = time.monotonic()
        if now - self._status_taken >= STATUS_PERIOD_S:
            self._status_taken = now
            self._status_sample = {**self.getStatus(), "log_first_index": self._SyncObj__raftLog[0][1]}
            leader = self._status_sample["leader"]
            if leader is not None and leader != self._last_leader:
                self._last_leader = leader
                self.leader_changes += 1
                _log.info("leader is now %s (term %d)", leader.id, self.raftCurrentTerm)

    # ------------------------------------------------------------ any thread
    def propose(self, payload: bytes, done: Proposed) -> None:
        """Queue one entry; ``done`` runs in the Raft thread once it applied or failed."""
        self._apply_entry(payload, callback=lambda result, error: done(result, _refusal(error)))

    def change_membership(self, action: str, raft_addr: str, done: Callable[[Refusal | None], None]) -> None:
        """Queue adding (``action="add"``) or removing a voter; ``done`` runs in the Raft thread."""
        change = self.addNodeToCluster if action == "add" else self.removeNodeFromCluster
        change(raft_addr, callback=lambda _, error: done(_refusal(error)))

    def transfer_leadership(self) -> None:
        """Hand leadership to a caught-up voter."""
        self.call_in_raft_thread(self.transferLeadership)

    def leader_addr(self) -> str | None:
        leader = self._getLeader()
        return leader.id if leader is not None else None

    def voters(self) -> list[str]:
        """Raft addresses of the voting members as this node currently knows them."""
        members = {node.id for node in self.otherNodes}
        if self.selfNode is not None:
            members.add(self.selfNode.id)
        return sorted(members)

    def follower_lag(self) -> tuple[bool, int] | None:
        """(caught up once since it started, committed entries still to apply, 0 if unknown) for a
        voter that has not caught up since it started, whatever it knows of its leader (a wiped node
        receiving a snapshot may know neither the leader nor its commit index yet: measured at 1 M
        contexts, every request through it waited the whole timeout), and for a voting follower with a
        known leader; else None. Read from the Raft thread's status sample without building
        ``status()``: it is asked on every read and write."""
        if self._settings.self_addr is None:
            return None
        raw = self._status_sample
        known = bool(raw) and raw["leader_commit_idx"] is not None and raw["last_applied"] is not None
        behind = raw["leader_commit_idx"] - raw["last_applied"] if known else 0
        if not self.isReady():
            return False, behind
        if not raw or _ROLES.get(raw["state"]) != "follower" or raw["leader"] is None or not known:
            return None
        return True, behind

    def status(self) -> dict[str, Any]:
        """This node's view of Raft: role, term, indexes, log size, peers' match index."""
        raw = self._status_sample
        if not raw:
            return {
                "role": "starting",
                "leader": None,
                "term": 0,
                "commit_index": 0,
                "applied_index": 0,
                "leader_commit_index": None,
                "log_entries": 0,
                "log_first_index": 0,
                "has_quorum": False,
                "ready": False,
                "match_index": {},
            }
        role = "replica" if self._settings.self_addr is None else _ROLES.get(raw["state"], "unknown")
        journal = self._transport.journal
        assert journal is not None  # the transport always swaps one in for a RaftNode
        return {
            "role": role,
            "leader": raw["leader"].id if raw["leader"] is not None else None,
            "term": raw["raft_term"],
            "commit_index": raw["commit_idx"],
            "applied_index": raw["last_applied"],
            "leader_commit_index": raw["leader_commit_idx"],
            "log_entries": raw["log_len"],
            "log_first_index": raw["log_first_index"],
            "has_quorum": raw["has_quorum"],
            "ready": self.isReady(),
            "match_index": {
                key[len("match_idx_server_") :]: value
                for key, value in raw.items()
                if key.startswith("match_idx_server_")
            },
            "read_index_rounds": self.read_index.rounds,
            "reads_served_ahead": self.read_index.served_ahead,
            "journal_syncs": journal.syncs,
            "journal_bytes": journal.bytes,
            "reconciled_append_entries": self._transport.reconciled_messages,
            "deferred_append_entries": self._transport.deferred_append_entries,
            "bulk_proposals_held": self._lanes.held_bulk(),
            "bulk_proposals_bound": self._lanes.held_bound(),
            "raft_thread_stalls": self.stalls,
            "raft_thread_stall_reports": self.stall_watch.reports,
            "snapshots_written": self.snapshots.written,
            "snapshot_failures": self.snapshots.failed,
            "snapshot_in_progress": self.snapshots.busy,
            "disk_alarm": self.disk.state.alarm,
            "disk_alarm_reasons": list(self.disk.state.reasons),
            "disk_free_bytes": self.disk.state.free_bytes,
        }

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 - pysyncobj's names
        """One pysyncobj tick, after forgiving the leader for this node's own stall.

        pysyncobj checks the election deadline at the start of a tick, before it reads the
        sockets. A follower whose thread was held longer than an election timeout (a snapshot
        chunk's fdatasync on a saturated disk, a SIGSTOP, a paused VM) found its deadline passed
        and stood at once, though its leader's heartbeats were waiting unread; pysyncobj has no
        PreVote, so the higher term deposed a healthy leader (measured at 1 M contexts: a wiped
        follower receiving its snapshot stood eight times in a minute, each restarting the
        transfer). After such a gap the timer restarts instead: the queued heartbeats reset it as
        usual, and if the leader is really gone this node stands one timeout later.
        """
        now = time.monotonic()
        gap, self._last_tick_began = now - self._last_tick_began, now
        if gap > self._settings.election_timeout[0]:
            self.stalls += 1
            if self._isLeader():
                _log.warning("raft thread held %.2f s as leader: followers heard nothing meanwhile", gap)
            else:
                _log.warning("raft thread stalled %.2f s: election timer restarted instead of standing", gap)
                self.reset_election_timer()
        self.stall_watch.tick_began()
        try:
            # What the last tick appended is on disk before this one counts it toward a commit, even if
            # that tick raised before its journal callback (a lone voter counts itself at once).
            journal = self._SyncObj__transport.journal  # set before the Raft thread starts
            if journal is not None:
                journal.sync()
            super()._onTick(timeToWait)
        except JournalSyncFailed:
            _log.critical("the Raft journal could not be fsynced; stopping this node", exc_info=True)
            os._exit(EXIT_JOURNAL_SYNC_FAILED)
        except lmdb.Error:
            # pysyncobj logs a failed tick and carries on; after a failed LMDB commit (EIO on a full
            # disk, seen at 1 M contexts) or apply, its applied index would count entries the store
            # lost, and the node would serve a state its log does not give. Stopping is safe: a
            # restart replays them. Every apply and group commit runs inside this tick.
            _log.critical(
                "the store failed in the Raft thread; stopping this node (last applied entry %d)",
                self.raftLastApplied,
                exc_info=True,
            )
            os._exit(EXIT_STORE_FAILED)
        finally:
            self.stall_watch.tick_ended()

    def reset_election_timer(self, grace: float = 0.0) -> None:
        """Restart the election timeout, ``grace`` seconds later than usual (Raft thread, or before
        it starts): installing a large snapshot kept this follower from ticking, and its leader is
        alive (it just sent the snapshot)."""
        self._SyncObj__raftElectionDeadline = time.monotonic() + grace + self._SyncObj__generateRaftTimeout()

    def _doDestroy(self) -> None:  # noqa: N802 - pysyncobj's name
        """pysyncobj's last act on the Raft thread as it stops: an entry being prepared is dropped
        here first, as its LMDB write transactions belong to this thread."""
        self._store.abandon_preparation()
        super()._doDestroy()

    def close(self) -> None:
        """Stop the Raft thread and wait for it, then for a snapshot being written."""
        self.destroy_synchronous()
        self.stall_watch.stop()
        self.snapshots.close()

    # --------------------------------------------- read_index.RaftView (Raft thread)
    def is_leader(self) -> bool:
        leader: bool = self._isLeader()
        return leader

    def known_leader(self) -> Hashable | None:
        leader: Hashable | None = self._getLeader()
        return leader

    @property
    def current_term(self) -> int:
        term: int = self.raftCurrentTerm
        return term

    @property
    def commit_index(self) -> int:
        index: int = self.raftCommitIndex
        return index

    @property
    def last_applied(self) -> int:
        index: int = self.raftLastApplied
        return index

    @property
    def own_term_noop_index(self) -> int | None:
        index: int | None = self._SyncObj__noopIDx
        return index

    @property
    def voting_peers(self) -> set[Hashable]:
        peers: set[Hashable] = self.otherNodes
        return peers

    def last_entry_for(self, namespace: str, after: int, through: int) -> int:
        """The last index in (``after``, ``through``] a read of ``namespace`` must wait for: an entry
        of that namespace or of none (``commands.read_scope_of``), or one that is not a command
        (pysyncobj's no-op, a membership change); ``after`` if none. Only entries this node knows
        committed are looked at: past its commit index a follower may still hold an earlier
        leader's entries that the current one will replace (the read waits, and is looked at
        again each tick as the commit index advances). Past ``SCOPED_SCAN_ENTRIES`` entries to
        look at, or one the journal no longer holds, the read waits for all of them."""
        if through - after > SCOPED_SCAN_ENTRIES or through > self.raftCommitIndex:
            return through
        scopes = self._read_scopes
        if len(scopes) > 2 * SCOPED_SCAN_ENTRIES:  # reads look past the applied index only: forget the rest
            for index in [index for index in scopes if index <= after]:
                del scopes[index]
        for index in range(through, after, -1):
            if index in scopes:
                scope = scopes[index]
            else:
                scope = scopes[index] = self._read_scope_at(index)
            if scope is None or scope == namespace:
                return index
        return after

    def _read_scope_at(self, index: int) -> str | None:
        journal = self._transport.journal
        assert journal is not None  # the transport always swaps one in for a RaftNode
        head = journal.command_head(index, 1 + NAMESPACE_WITHIN)  # the type byte, then the call's pickle
        return read_scope_of(head[1:]) if head is not None and head[:1] == _REGULAR else None
