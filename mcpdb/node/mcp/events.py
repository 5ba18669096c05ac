"""Resumable MCP streams: a bounded in-memory log of the SSE events each session was sent.

With an event store the SDK gives every SSE event an ``id`` and opens each
stream with a priming event that carries ``retry:`` (``RETRY_MS``; clients of
protocol 2025-11-25 and later), so a client whose stream dropped, in the middle
of a long ``chat`` say, reconnects with ``GET /mcp`` and ``Last-Event-ID`` and
is sent what it missed: the progress notifications and the reply.

- Bounded per node: at most ``MAX_EVENTS`` events and ``MAX_BYTES`` bytes of
  their JSON, oldest dropped first. A stream dropped long ago (or on a busy
  node) may be past resuming; its replay is then empty.
- Kept per session. The SDK names a stream by its JSON-RPC request id ("1",
  "2", ...), or by one fixed key for the GET stream, alike in every session,
  and hands one store to every session: shared as it is, a Last-Event-ID
  would replay other sessions' events on that stream. So each session's
  transport gets its own view, and its events go when the session ends.
- In memory only: a node that restarts has no sessions left to resume either.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from mcp.server.streamable_http import (
    EventCallback,
    EventId,
    EventMessage,
    EventStore,
    StreamId,
)
from mcp_types import JSONRPCMessage, jsonrpc_message_adapter

from mcpdb.node.mcp.sessions import OwnedSessions

MAX_EVENTS = 10_000
MAX_BYTES = 32 * 1024 * 1024
RETRY_MS = 1000  # what a client waits before reconnecting a dropped stream


@dataclass(frozen=True)
class _Event:
    session: str
    stream: StreamId
    message: bytes | None  # JSON; None for a stream's priming event


class EventLog:
    """Every session's events on this node, oldest first, within the bounds."""

    def __init__(self, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES) -> None:
        self._max_events, self._max_bytes = max_events, max_bytes
        self._events: OrderedDict[int, _Event] = OrderedDict()
        self._streams: dict[tuple[str, StreamId], deque[int]] = {}
        self._bytes = 0
        self._sequence = itertools.count(1)

    def __len__(self) -> int:
        return len(self._events)

    @property
    def bytes(self) -> int:
        return self._bytes

    def for_session(self, session_id: str) -> EventStore:
        return _SessionEvents(self, session_id)

    def store(self, session: str, stream: StreamId, message: JSONRPCMessage | None) -> EventId:
        sequence = next(self._sequence)
        data = None if message is None else message.model_dump_json(by_alias=True, exclude_unset=True).encode()
        self._events[sequence] = _Event(session, stream, data)
        self._streams.setdefault((session, stream), deque()).append(sequence)
        self._bytes += len(data or b"")
        while len(self._events) > self._max_events or self._bytes > self._max_bytes:
            self._drop(next(iter(self._events)))
        return str(sequence)

    async def replay(self, session: str, last_event_id: EventId, send: EventCallback) -> StreamId | None:
        """Send the events of ``last_event_id``'s stream that followed it; None if it is not (or no longer)
        one of ``session``'s."""
        sequence = int(last_event_id) if last_event_id.isdigit() else 0
        event = self._events.get(sequence)
        if event is None or event.session != session:
            return None
        for later in [s for s in self._streams[(session, event.stream)] if s > sequence]:
            message = self._events[later].message
            if message is not None:
                await send(EventMessage(jsonrpc_message_adapter.validate_json(message), str(later)))
        return event.stream

    def forget(self, session: str) -> None:
        for key in [key for key in self._streams if key[0] == session]:
            for sequence in list(self._streams[key]):
                self._drop(sequence)

    def _drop(self, sequence: int) -> None:
        event = self._events.pop(sequence)
        self._bytes -= len(event.message or b"")
        key = (event.session, event.stream)
        stream = self._streams[key]
        stream.popleft()  # events are dropped oldest first, by the bounds or by forget
        if not stream:
            del self._streams[key]


class _SessionEvents(EventStore):
    """One session's view of the log: the store the SDK's transport of that session writes to."""

    def __init__(self, log: EventLog, session: str) -> None:
        self._log, self._session = log, session

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        return self._log.store(self._session, stream_id, message)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        return await self._log.replay(self._session, last_event_id, send_callback)


class ResumableSessions(OwnedSessions):
    """The node's sessions with their events logged, each session in its own view of ``events``."""

    def __init__(self, *args: Any, events: EventLog, **kwargs: Any) -> None:
        super().__init__(*args, retry_interval=RETRY_MS, **kwargs)
        self.events = events

    def _admit_session(self, requestor: Any) -> Any:
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            # The SDK gives every session the manager's one store; mcp is pinned (==2.3.0) for this attribute.
            transport._event_store = self.events.for_session(transport.mcp_session_id)
        return transport

    async def _discard_session(self, session_id: str, transport: Any) -> None:
        await super()._discard_session(session_id, transport)
        self.events.forget(session_id)
