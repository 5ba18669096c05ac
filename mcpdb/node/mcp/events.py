"""Resumable MCP streams: a bounded in-memory log of the SSE events each session was sent.

With an event store the SDK gives every SSE event an ``id`` and opens each
stream with a priming event that carries ``retry:`` (``RETRY_MS``; clients of
protocol 2025-11-25 and later), so a client whose stream dropped, in the middle
of a long ``chat`` say, reconnects with ``GET /mcp`` and ``Last-Event-ID`` and
is sent what it missed: the progress notifications and the reply.

- Bounded per node (``MAX_EVENTS`` events, ``MAX_BYTES`` bytes of their JSON)
  and per session (``SESSION_EVENTS``, ``SESSION_BYTES``: a session past its
  quota loses its own oldest events). Past the node's bound the oldest event
  of the session holding the most goes first, so one client's flood pushes
  out its own events, not everyone else's. A stream dropped long ago may be
  past resuming; its replay is then empty.
- Kept per session, with ids of the session's own (a counter per session: ids
  say nothing about other sessions' traffic). The SDK names a stream by its
  JSON-RPC request id, or by one fixed key for the GET stream, alike in every
  session, so each session's transport gets its own view, and its events go
  when the session ends. A request id used again after its request finished
  starts a new stream: resuming the first replays only the first.
- A resumed stream ends with its request: replaying a finished request's
  stream sends what followed the client's last event and closes; resuming an
  unfinished one also sends what arrives later, until the response. (Handing
  the SDK the stream id instead registers a live stream that, once its
  request is done, is never written to nor closed, and holds the session
  open: an open GET counts as a request in flight.)
- GET-stream notifications are logged only once the session has opened its
  GET stream: the SDK logs them whether or not anyone will ever read them.
- In memory only: a node that restarts has no sessions left to resume either.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    EventCallback,
    EventId,
    EventMessage,
    EventStore,
    StreamId,
)
from mcp_types import (
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)

from mcpdb.node.mcp.sessions import OwnedSessions

MAX_EVENTS = 10_000
MAX_BYTES = 32 * 1024 * 1024
SESSION_EVENTS = 1_000
SESSION_BYTES = 4 * 1024 * 1024
RETRY_MS = 1000  # what a client waits before reconnecting a dropped stream


@dataclass(eq=False)
class _Stream:
    """One stream of a session: a request's (until its response) or the GET stream."""

    name: StreamId
    events: deque[int] = field(default_factory=deque)  # the session's event numbers, oldest first
    finished: bool = False


@dataclass(frozen=True)
class _Event:
    stream: _Stream
    message: bytes | None  # JSON; None for a stream's priming event


class _SessionLog:
    """One session's events and streams, and a signal for replays waiting on more."""

    def __init__(self) -> None:
        self.events: OrderedDict[int, _Event] = OrderedDict()
        self.streams: dict[StreamId, _Stream] = {}  # each name's newest stream
        self.bytes = 0
        self.numbers = itertools.count(1)
        self.get_opened = False
        self.closed = False
        self.grew = asyncio.Event()

    def wake(self) -> None:
        self.grew.set()
        self.grew = asyncio.Event()


class EventLog:
    """Every session's events on this node, within the node's and each session's bounds."""

    def __init__(
        self,
        max_events: int = MAX_EVENTS,
        max_bytes: int = MAX_BYTES,
        session_events: int = SESSION_EVENTS,
        session_bytes: int = SESSION_BYTES,
    ) -> None:
        self._max_events, self._max_bytes = max_events, max_bytes
        self._session_events, self._session_bytes = session_events, session_bytes
        self._sessions: dict[str, _SessionLog] = {}
        self._count = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        return self._bytes

    def for_session(self, session_id: str) -> EventStore:
        self._sessions.setdefault(session_id, _SessionLog())
        return _SessionEvents(self, session_id)

    def get_stream_opened(self, session: str) -> None:
        """The session opened its GET stream: from now on its notifications are worth keeping."""
        log = self._sessions.get(session)
        if log is not None:
            log.get_opened = True

    def store(self, session: str, name: StreamId, message: JSONRPCMessage | None) -> EventId:
        log = self._sessions.get(session)
        if log is None:  # the session has ended: nothing of it is resumable any more
            return "0"
        number = next(log.numbers)
        if name == GET_STREAM_KEY and message is not None and not log.get_opened:
            return str(number)  # nobody reads this session's GET stream: nothing to resume
        stream = log.streams.get(name)
        if stream is None or stream.finished or (message is None and name != GET_STREAM_KEY):
            stream = log.streams[name] = _Stream(name)  # a priming event opens a new stream of that name
        data = None if message is None else message.model_dump_json(by_alias=True, exclude_unset=True).encode()
        log.events[number] = _Event(stream, data)
        stream.events.append(number)
        if name != GET_STREAM_KEY and isinstance(message, JSONRPCResponse | JSONRPCError):
            stream.finished = True
        size = len(data or b"")
        log.bytes += size
        self._count += 1
        self._bytes += size
        while len(log.events) > self._session_events or log.bytes > self._session_bytes:
            self._drop_oldest(log)
        while self._count > self._max_events or self._bytes > self._max_bytes:
            by_bytes = self._bytes > self._max_bytes
            self._drop_oldest(max(self._sessions.values(), key=lambda s: s.bytes if by_bytes else len(s.events)))
        log.wake()
        return str(number)

    async def replay(self, session: str, last_event_id: EventId, send: EventCallback) -> StreamId | None:
        """Send the events of ``last_event_id``'s stream that followed it, and, if its request is still
        running, those still to come until its response. The GET stream's name, for the SDK to go on
        with it live; None otherwise, or if the id is not (or no longer) one of ``session``'s."""
        log = self._sessions.get(session)
        number = int(last_event_id) if last_event_id.isdigit() else 0
        event = None if log is None else log.events.get(number)
        if log is None or event is None:
            return None
        stream = event.stream
        while True:
            grew = log.grew
            for later in [n for n in stream.events if n > number]:
                number = later
                kept = log.events.get(later)  # it may have gone to the bounds while the previous one was sent
                if kept is not None and kept.message is not None:
                    await send(EventMessage(jsonrpc_message_adapter.validate_json(kept.message), str(later)))
            if stream.name == GET_STREAM_KEY:
                return GET_STREAM_KEY
            gone = log.closed or (log.streams.get(stream.name) is not stream and not stream.events)
            if stream.finished or gone:
                return None
            await grew.wait()

    def forget(self, session: str) -> None:
        log = self._sessions.pop(session, None)
        if log is not None:
            self._count -= len(log.events)
            self._bytes -= log.bytes
            log.closed = True
            log.wake()

    def _drop_oldest(self, log: _SessionLog) -> None:
        _, event = log.events.popitem(last=False)
        size = len(event.message or b"")
        log.bytes -= size
        self._count -= 1
        self._bytes -= size
        stream = event.stream
        stream.events.popleft()  # a session's events go oldest first, so its stream's oldest is this one
        if not stream.events and log.streams.get(stream.name) is stream:
            del log.streams[stream.name]


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

    def _stream_opened(self, session_id: str) -> None:
        self.events.get_stream_opened(session_id)

    async def _discard_session(self, session_id: str, transport: Any) -> None:
        await super()._discard_session(session_id, transport)
        self.events.forget(session_id)
