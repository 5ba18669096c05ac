"""pysyncobj transport with mcpdb's hooks into the Raft message flow.

pysyncobj lets the application choose the transport class. mcpdb uses that
seam, the narrowest one available, for two things:

- incoming AppendEntries are reconciled with the local log first, so that
  pysyncobj never truncates entries that match the leader's (``raft_safety``);
- ReadIndex messages (``read_index``) travel on the same connections, and
  never reach pysyncobj;
- the journal is fsynced before a follower acknowledges entries when the
  node is durable (``durability``); acknowledgements produced while one poll
  delivers many AppendEntries are held and share a single fsync;
- every node sends each peer a tiny keepalive once a second. pysyncobj closes
  a connection that has read nothing for ``connectionTimeout`` the next time
  it *sends* on it, dropping that message. Two followers never talk while a
  leader is up, so without keepalives the first RequestVote after the leader
  dies was lost and failover took a second election round.

Anything here reads pysyncobj internals, which is why ``replication`` pins
its exact version and refuses to start on another.
"""

from __future__ import annotations

import time
from typing import Any

from pysyncobj.node import Node
from pysyncobj.transport import TCPTransport

from mcpdb.raft.journal import SyncedJournal
from mcpdb.raft.log_guard import reconcile
from mcpdb.raft.read_index import MESSAGE_TYPES, ReadIndex

KEEPALIVE = "mcpdb_keepalive"
KEEPALIVE_INTERVAL_S = 1.0  # well inside RaftSettings' connection timeout


class McpdbTransport(TCPTransport):
    """TCP transport that guards the follower's log and makes acknowledgements durable."""

    durable: bool = True
    guard_log: bool = True
    reconciled_messages = 0
    read_index: ReadIndex | None = None

    def __init__(self, syncObj: Any, selfNode: Node | None, otherNodes: Any) -> None:  # noqa: N803
        super().__init__(syncObj, selfNode, otherNodes)
        self.journal: SyncedJournal | None = None
        journal_path = syncObj.conf.journalFile
        self._held_acks: dict[Node, dict[str, Any]] = {}
        self._next_keepalive = 0.0
        syncObj.addOnTickCallback(self._send_keepalives)
        if self.durable and journal_path is not None:
            # The transport is built inside SyncObj.__init__ after the journal
            # and before the Raft thread starts, so these swaps race nothing.
            self.journal = SyncedJournal(syncObj._SyncObj__raftLog, journal_path)
            syncObj._SyncObj__raftLog = self.journal
            syncObj.addOnTickCallback(self.journal.sync)
            poll = syncObj._poller.poll

            def poll_then_release(timeout: float) -> None:
                poll(timeout)
                self._release_acks()

            syncObj._poller.poll = poll_then_release

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
        if isinstance(message, dict) and message.get("type") in MESSAGE_TYPES:
            if self.read_index is not None:
                self.read_index.on_message(node, message)
            return
        if not self.guard_log or not isinstance(message, dict) or message.get("type") != "append_entries":
            super()._onMessageReceived(node, message)
            return
        log = self._syncObj._SyncObj__raftLog
        first_index = log[0][1]
        result = reconcile(message, self._syncObj.raftCurrentTerm, first_index, log[-1][1],
                           lambda index: log[index - first_index][2])
        if result.message is not message:
            self.reconciled_messages += 1
        super()._onMessageReceived(node, result.message)
        if result.ack_through is not None:
            self.send(node, {"type": "next_node_idx", "next_node_idx": result.ack_through + 1,
                             "reset": False, "success": True})

    def send(self, node: Node, message: Any) -> bool:
        if self.journal is None:
            return super().send(node, message)
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success"):
            # Hold the acknowledgement until the entries it covers are on disk.
            # One poll can deliver many AppendEntries: they share one fsync,
            # and only the newest acknowledgement per leader matters.
            self._held_acks[node] = message
            return True
        if node in self._held_acks:
            self._release_acks()  # keep this node's messages in order
        return super().send(node, message)

    def _release_acks(self) -> None:
        if not self._held_acks:
            return
        assert self.journal is not None
        self.journal.sync()
        held, self._held_acks = self._held_acks, {}
        for node, message in held.items():
            super().send(node, message)


def transport_class(durable: bool, guard_log: bool = True) -> type[McpdbTransport]:
    """A transport class with the settings baked in (pysyncobj instantiates it itself)."""
    return type("McpdbTransport", (McpdbTransport,), {"durable": durable, "guard_log": guard_log})
