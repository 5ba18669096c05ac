"""pysyncobj transport with mcpdb's hooks into the Raft message flow.

pysyncobj lets the application choose the transport class. mcpdb uses that
seam, the narrowest one available, to make the journal durable before a
follower acknowledges entries (see ``durability``). Anything here reads
pysyncobj internals, which is why ``replication`` pins its exact version.
"""

from __future__ import annotations

from typing import Any

from pysyncobj.node import Node
from pysyncobj.transport import TCPTransport

from mcpdb.durability import SyncedJournal


class McpdbTransport(TCPTransport):
    """TCP transport that fsyncs the journal before acknowledging AppendEntries when durable."""

    durable: bool = True

    def __init__(self, syncObj: Any, selfNode: Node | None, otherNodes: Any) -> None:  # noqa: N803
        super().__init__(syncObj, selfNode, otherNodes)
        self.journal: SyncedJournal | None = None
        journal_path = syncObj.conf.journalFile
        if self.durable and journal_path is not None:
            # The transport is built inside SyncObj.__init__ after the journal
            # and before the Raft thread starts, so the swap races nothing.
            self.journal = SyncedJournal(syncObj._SyncObj__raftLog, journal_path)
            syncObj._SyncObj__raftLog = self.journal
            syncObj.addOnTickCallback(self.journal.sync)

    def send(self, node: Node, message: Any) -> bool:
        if (self.journal is not None and isinstance(message, dict)
                and message.get("type") == "next_node_idx" and message.get("success")):
            self.journal.sync()
        return super().send(node, message)


def transport_class(durable: bool) -> type[McpdbTransport]:
    """A transport class with the durability setting baked in (pysyncobj instantiates it)."""
    return type("McpdbTransport", (McpdbTransport,), {"durable": durable})
