"""The journal's fsyncs in a thread of their own, so the Raft thread goes on ticking while the disk writes.

py-spy on every node under ``mcpdb bench kv``'s durable writes put the Raft thread in ``Journal.sync``
for about 40% of its busy time (RESULTS.md, issue 16, session 22): the GIL was free, but the thread
read no socket, applied nothing and acknowledged nothing while the disk wrote. etcd's leader sends a
Ready's entries to its followers before it saves them to its WAL; the Raft thesis (10.2.1) allows a
leader to write its log in parallel with replicating it, as long as it counts itself toward a commit
only once its own copy is durable, and a follower acknowledges only what is durable.

The Raft thread asks for a pass (``request``) and gets a ticket; the thread fsyncs every file asked
for since the last pass, then marks the ticket done and wakes the Raft thread's poll (``wake``).
Requests that come while a pass runs share the next one, so a busy node's fsyncs are as large as
the disk's latency makes them. What waits for a ticket: a follower's acknowledgement
(``McpdbTransport``), and a leader or candidate at the start of a tick (``RaftNode._onTick``), before
it counts its own log.

A failed fsync is final (``JournalSyncFailed``): Linux may have dropped the dirty pages and reports
the error once, so no later ticket is ever marked done and the Raft thread stops the node at its
next look.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class JournalSyncFailed(OSError):
    """An fsync of the journal failed. After a failed fsync Linux may have dropped the dirty pages
    and reports the error once: a retry that succeeds proves nothing, so the node must stop."""


class JournalSyncer:
    """fsyncs files in a daemon thread, in passes; one writer asks (the Raft thread)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._changed = threading.Condition()
        self._asked: dict[int, None] = {}  # file descriptors for the next pass, in the order asked
        self._requested = 0  # tickets given
        self._finished = 0  # every ticket up to this one is on disk
        self._failure: JournalSyncFailed | None = None
        self._closing = False
        self.fsyncs = 0
        self._thread: threading.Thread | None = None  # started at the first request

    def request(self, fds: list[int]) -> int:
        """fsync ``fds`` in the next pass; the ticket ``done`` reports once they (and every file asked
        for before) are on disk. Asking for nothing returns the last ticket given."""
        with self._changed:
            if fds:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="journal-sync", daemon=True)
                    self._thread.start()
                self._asked.update(dict.fromkeys(fds))
                self._requested += 1
                self._changed.notify_all()
            return self._requested

    def done(self, ticket: int) -> bool:
        """Whether ``ticket``'s files are on disk; raises once an fsync failed."""
        if self._failure is not None:
            raise self._failure
        return self._finished >= ticket

    def wait(self, ticket: int | None = None) -> None:
        """Block until ``ticket`` (by default every ticket given) is done; raises once an fsync failed.
        Before a file asked for is closed, the Raft thread waits here: no pass still holds it."""
        with self._changed:
            goal = self._requested if ticket is None else ticket
            while self._finished < goal and self._failure is None:
                self._changed.wait()
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        """Finish what was asked for and stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._asked and not self._closing:
                    self._changed.wait()
                if not self._asked:
                    return
                fds, self._asked = list(self._asked), {}
                ticket = self._requested
            try:
                for fd in fds:
                    os.fsync(fd)
                    self.fsyncs += 1
            except OSError as error:
                failure = JournalSyncFailed(error.errno, f"fsync of the Raft journal failed: {error}")
                with self._changed:
                    self._failure = failure
                    self._changed.notify_all()
                self._wake()
                return
            with self._changed:
                self._finished = ticket
                self._changed.notify_all()
            self._wake()
