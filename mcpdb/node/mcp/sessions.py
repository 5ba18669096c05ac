"""MCP sessions and subscriptions of a node: owned by a principal, bounded, fed by the change feed.

What an outside probe showed and this module rules out:

- A session belongs to the principal that opened it (the token, or root):
  the SDK compares the ASGI ``user`` of every request on a session with the
  one that created it and answers 404 for anyone else, so a session id
  learnt by another token opens no stream, receives no notification and
  cannot be deleted. ``SessionEndpoint`` puts the principal there.
- Sessions are bounded per node and per principal (429 with Retry-After
  past the principal's share, so one token cannot take the node's), and a
  session with no request in flight and no open stream for ``idle_timeout``
  seconds is closed.
- ``resources/subscribe`` is idempotent per (session, URI), ``unsubscribe``
  removes it, and a session holds at most ``MAX_SUBSCRIPTIONS`` URIs. They
  are keyed by the session's Connection (the SDK builds a new ServerSession
  object per request, so keying by it added a listener per subscribe) and
  dropped when the connection ends. Each session has one sender of its
  notifications, fed by the set of its URIs changed since it last sent (a URI
  changed twice meanwhile is sent once), so a client that stops reading holds
  at most one waiting send and ``MAX_SUBSCRIPTIONS`` pending URIs, and its
  notifications keep the order of the changes.
- A session has at most ``MAX_STREAMS_PER_SESSION`` GET streams open at once
  (its notification stream and resumed ones), and a principal at most
  ``streams_per_owner`` over all its sessions (429 past either).
- A revoked token's sessions end: ``end_revoked`` terminates them (and so
  their streams), the server calls it every ``REVOCATION_CHECK_S``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import anyio
import mcp_types as types
import orjson
from mcp.server import Server
from mcp.server.auth.middleware.bearer_auth import (
    AuthenticatedUser,
    AuthorizationContext,
    authorization_context,
)
from mcp.server.auth.provider import AccessToken
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.subscriptions import ResourceUpdated, ServerEvent
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from mcpdb.auth import Principal
from mcpdb.errors import HistoryTrimmed
from mcpdb.node.http.access import PRINCIPAL_KEY
from mcpdb.node.mcp.node_view import FeedNode
from mcpdb.store.changes import Cursor

_log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 256  # resource URIs one session (or one listen stream) may watch
MAX_STREAMS_PER_SESSION = 4  # GET streams open at once in one session
REVOCATION_CHECK_S = 1.0
FEED_IDLE_S = 30.0
SESSION_LIMIT_RETRY_S = 5


def context_uri(namespace: str, kind: str, context_id: str) -> str:
    return f"mcpdb://{namespace}/{kind}/{context_id}"


_TOKEN_OWNER = "token:"


def owner_of(principal: Principal) -> AuthenticatedUser:
    """The SDK's notion of who a request acts as, for comparing a session's requests with its opener."""
    client_id = "root" if principal.token_id is None else f"{_TOKEN_OWNER}{principal.token_id}"
    return AuthenticatedUser(AccessToken(token=client_id, client_id=client_id, scopes=[]))


class TooMany(Exception):
    """A session or stream refused at one of the bounds (429)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OwnedSessions(StreamableHTTPSessionManager):
    """The SDK's session manager with per-principal bounds besides its per-node one, on sessions and on
    GET streams, and sessions that end with their token.

    Admission happens under the SDK's session-creation lock, so the count is
    exact however many sessions are opened at once.
    """

    def __init__(
        self, app: Server[Any], *, max_sessions: int, max_sessions_per_owner: int, streams_per_owner: int, **kwargs: Any
    ) -> None:
        super().__init__(app, max_sessions=max_sessions, **kwargs)
        self._per_owner = max_sessions_per_owner
        self._streams_per_owner = streams_per_owner
        self._streams: dict[str, int] = {}  # open GET streams by session

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            raise TooMany(
                f"this node has {self.max_sessions} MCP sessions open (--mcp-max-sessions); "
                "close one (DELETE /mcp) or wait for idle ones to expire"
            )
        owned = sum(1 for owner in self._session_owners.values() if owner == requestor)
        if owned >= self._per_owner:
            raise TooMany(
                f"this token has {owned} MCP sessions open on this node, the most it may "
                "(--mcp-sessions-per-token); close one (DELETE /mcp) or wait for idle ones to expire"
            )
        return super()._admit_session(requestor)

    async def handle_request(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve a request; a GET stream of one of the requestor's sessions counts against the bounds
        while it is open."""
        session_id = _header(scope, b"mcp-session-id")
        user = scope.get("user")
        owner = self._session_owners.get(session_id or "")
        if (
            scope.get("method") != "GET"
            or owner is None
            or not isinstance(user, AuthenticatedUser)
            or authorization_context(user) != owner
        ):
            await super().handle_request(scope, receive, send)  # the SDK answers, 404 for someone else's
            return
        assert session_id is not None
        if self._streams.get(session_id, 0) >= MAX_STREAMS_PER_SESSION:
            raise TooMany(
                f"this session has {MAX_STREAMS_PER_SESSION} GET streams open, the most it may; close one first"
            )
        owned = sum(count for sid, count in self._streams.items() if self._session_owners.get(sid) == owner)
        if owned >= self._streams_per_owner:
            raise TooMany(
                f"this token has {owned} MCP GET streams open on this node, the most it may "
                "(twice --mcp-sessions-per-token); close one first"
            )
        self._streams[session_id] = self._streams.get(session_id, 0) + 1
        self._stream_opened(session_id)
        try:
            await super().handle_request(scope, receive, send)
        finally:
            self._streams[session_id] -= 1
            if not self._streams[session_id]:
                del self._streams[session_id]

    def _stream_opened(self, session_id: str) -> None:
        """A GET stream of ``session_id`` is about to open (a hook for subclasses)."""

    async def end_revoked(self, revoked: Callable[[str], bool]) -> None:
        """End every session whose token ``revoked`` says is gone (its streams with it)."""
        for session_id, owner in list(self._session_owners.items()):
            client_id = owner["client_id"]
            transport = self._server_instances.get(session_id)
            if (
                transport is not None
                and client_id.startswith(_TOKEN_OWNER)
                and revoked(client_id.removeprefix(_TOKEN_OWNER))
            ):
                await self._discard_session(session_id, transport)

    @property
    def open_sessions(self) -> int:
        return len(self._server_instances)


def _header(scope: Any, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name), None)


class SessionEndpoint:
    """``/mcp``: the gate's principal becomes the session owner; a refused admission is a 429.

    A class instance, not a function, so that Starlette's Route hands it ASGI calls."""

    def __init__(self, sessions: OwnedSessions) -> None:
        self._sessions = sessions

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["user"] = owner_of(scope[PRINCIPAL_KEY])
        try:
            await self._sessions.handle_request(scope, receive, send)
        except TooMany as refused:
            body = orjson.dumps(
                {"jsonrpc": "2.0", "id": None, "error": {"code": types.INVALID_REQUEST, "message": refused.message}}
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", str(SESSION_LIMIT_RETRY_S).encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


class ChangeBus:
    """The SDK's subscription bus, fed by the node's change feed only while someone listens
    (so a node without MCP subscribers pays nothing per commit)."""

    def __init__(self, runtime: FeedNode) -> None:
        self._runtime = runtime
        self._listeners: dict[object, Callable[[ServerEvent], None]] = {}
        self._pump: asyncio.Task[None] | None = None

    async def publish(self, event: ServerEvent) -> None:
        for listener in list(self._listeners.values()):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - one broken listener must not starve the others
                _log.exception("subscription listener failed")

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        token = object()
        self._listeners[token] = listener
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._follow())

        def unsubscribe() -> None:
            self._listeners.pop(token, None)
            if not self._listeners and self._pump is not None:
                self._pump.cancel()
                self._pump = None

        return unsubscribe

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    async def _follow(self) -> None:
        cursor = Cursor(self._runtime.store.applied_index())
        while True:
            try:
                async for batch in self._runtime.change_feed.follow(cursor, FEED_IDLE_S):
                    for change, _ in batch:
                        await self.publish(ResourceUpdated(uri=context_uri(change.namespace, change.kind, change.id)))
                        cursor = Cursor(change.version, change.position)
            except HistoryTrimmed:  # fell behind the whole history: carry on from now
                cursor = Cursor(self._runtime.store.applied_index())


class _SessionWatch:
    """One session's subscribed URIs, its one listener on the bus and its one sender."""

    def __init__(self, connection: Connection, bus: ChangeBus, gone: Callable[[], None]) -> None:
        self.uris: set[str] = set()
        self.pending: dict[str, None] = {}  # changed URIs not sent yet, in the order they first changed
        self._connection = connection
        self._gone = gone
        self._wake = asyncio.Event()
        self._unsubscribe = bus.subscribe(self._deliver)
        self._sender = asyncio.get_running_loop().create_task(self._send())

    def _deliver(self, event: ServerEvent) -> None:
        if isinstance(event, ResourceUpdated) and event.uri in self.uris:
            self.pending[event.uri] = None
            self._wake.set()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                uri = next(iter(self.pending))
                del self.pending[uri]
                try:
                    await self._connection.send_resource_updated(uri)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                    self._gone()  # the session's stream is gone: forget the watch, so a new subscribe starts anew
                    return

    def discard(self, uri: str) -> None:
        self.uris.discard(uri)
        self.pending.pop(uri, None)

    def close(self) -> None:
        self.uris.clear()
        self.pending.clear()
        self._unsubscribe()
        self._sender.cancel()


class HandshakeSubscriptions:
    """``resources/subscribe`` of the handshake era, per session (its Connection)."""

    def __init__(self, bus: ChangeBus) -> None:
        self._bus = bus
        self._watches: dict[Connection, _SessionWatch] = {}

    def __len__(self) -> int:
        return sum(len(watch.uris) for watch in self._watches.values())

    @property
    def pending(self) -> int:
        """Notifications waiting for their session's sender (at most one per subscribed URI)."""
        return sum(len(watch.pending) for watch in self._watches.values())

    async def subscribe(self, ctx: ServerRequestContext[Any, Any], uri: str) -> None:
        """Add ``uri`` (already checked for access) to the session's subscriptions."""
        connection = _connection_of(ctx)
        watch = self._watches.get(connection)
        if watch is None:
            watch = self._watches[connection] = _SessionWatch(
                connection, self._bus, functools.partial(self._forget, connection)
            )
            connection.exit_stack.callback(self._forget, connection)
        if uri not in watch.uris and len(watch.uris) >= MAX_SUBSCRIPTIONS:
            raise MCPError(
                INVALID_PARAMS,
                f"this session already watches {MAX_SUBSCRIPTIONS} resources, the most "
                "it may; unsubscribe from one first",
            )
        watch.uris.add(uri)

    async def unsubscribe(self, ctx: ServerRequestContext[Any, Any], uri: str) -> None:
        connection = _connection_of(ctx)
        watch = self._watches.get(connection)
        if watch is not None:
            watch.discard(uri)
            if not watch.uris:
                self._forget(connection)

    def _forget(self, connection: Connection) -> None:
        watch = self._watches.pop(connection, None)
        if watch is not None:
            watch.close()


def _connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection:
    """The session's connection: the one object the SDK keeps for all requests of a session
    (``ctx.session`` is built anew for each request). mcp is pinned (==2.3.0) for this attribute."""
    connection = getattr(ctx.session, "_connection", None)
    if not isinstance(connection, Connection):
        raise RuntimeError("mcp SDK without ServerSession._connection: mcpdb needs mcp==2.3.0")
    return connection
