"""The Model Context Protocol server of a node (official ``mcp`` SDK), at ``/mcp`` (streamable HTTP).

- Resources: every context the caller may read, as ``mcpdb://{namespace}/{kind}/{id}``
  (JSON), listed page by page and read linearizably; the template lets a
  client address one directly.
- Subscriptions: ``resources/subscribe`` (handshake era) and
  ``subscriptions/listen`` (2026-07-28 era) both ride on the node's change
  feed, the same history ``/watch`` streams: a change to a subscribed context
  sends ``notifications/resources/updated`` for its URI.
- Tools: see mcpdb.node.mcp.tools. Prompts: stored instructions, ``{{name}}``
  placeholders in their text becoming the prompt's arguments.

Every request went through the REST gate first, so the caller's principal
sits in the HTTP request's scope; each handler checks its namespaces with it.
``mcpdb mcp`` relays a desktop client's stdio to this endpoint (mcpdb/cli/mcp_stdio.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import mcp_types as types
import orjson
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import ListenHandler
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST
from mcp_types.version import is_version_at_least
from prometheus_client.core import Metric

from mcpdb import __version__
from mcpdb.auth import ALL_NAMESPACES, Principal, Scope
from mcpdb.errors import Forbidden, Hidden, InvalidName, NotFound
from mcpdb.model import KINDS
from mcpdb.node.http.access import principal_of
from mcpdb.node.mcp.events import EventLog, ResumableSessions
from mcpdb.node.mcp.jsonrpc import EnvelopeCheck
from mcpdb.node.mcp.node_view import McpNode
from mcpdb.node.mcp.sessions import (
    MAX_SUBSCRIPTIONS,
    REVOCATION_CHECK_S,
    ChangeBus,
    HandshakeSubscriptions,
    SessionEndpoint,
    context_uri,
)
from mcpdb.node.mcp.tools import Caller, ContextTools, Progress
from mcpdb.node.metrics import gauge
from mcpdb.service import Consistency

_URI = re.compile(r"^mcpdb://([^/]+)/([a-z]+)/([^/]+)$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
PAGE_SIZE = 100
RESOURCE_NOT_FOUND = -32002
"""Resource not found, in the handshake era; from 2026-07-28 (SEP-2164) it is -32602 Invalid params."""


def _match_uri(uri: str) -> tuple[str, str, str] | None:
    match = _URI.match(uri)
    if match is None or match[2] not in KINDS:
        return None
    return match[1], match[2], match[3]


def _parse_uri(uri: str) -> tuple[str, str, str]:
    parts = _match_uri(uri)
    if parts is None:
        raise MCPError(INVALID_PARAMS, f"not an mcpdb resource URI: {uri!r} (mcpdb://namespace/kind/id)")
    return parts


def _no_resource(ctx: ServerRequestContext[Any, Any], uri: str, message: str) -> MCPError:
    """Resource not found, with the code of the session's protocol era and the URI in ``data``."""
    code = INVALID_PARAMS if is_version_at_least(ctx.protocol_version, "2026-07-28") else RESOURCE_NOT_FOUND
    return MCPError(code, message, data={"uri": uri})


def _checked(principal: Principal, namespace: str) -> None:
    """Read access to ``namespace``, refused in MCP's terms (a hidden namespace looks missing)."""
    try:
        principal.check(namespace, Scope.read)
    except (Hidden, Forbidden) as refused:
        raise MCPError(INVALID_PARAMS, str(refused)) from None


def _principal(ctx: ServerRequestContext[Any, Any]) -> Principal:
    if ctx.request is None:
        raise MCPError(INVALID_PARAMS, "mcpdb serves MCP over HTTP only (use `mcpdb mcp` for stdio)")
    return principal_of(ctx.request)


def _progress(ctx: ServerRequestContext[Any, Any]) -> Progress | None:
    """``notifications/progress`` on the request's own stream, if the caller sent a progress token."""
    token = (ctx.meta or {}).get("progress_token")
    if token is None:
        return None

    async def report(pieces: int, text: str) -> None:
        await ctx.session.send_progress_notification(
            token, pieces, message=text, related_request_id=str(ctx.request_id)
        )

    return report


class McpServer:
    """The MCP server of one node and its ASGI endpoint."""

    def __init__(self, runtime: McpNode) -> None:
        self._runtime = runtime
        self._tools = ContextTools(runtime)
        self._bus = ChangeBus(runtime)
        config = runtime.config
        self._listen = ListenHandler(self._bus, max_subscriptions=config.mcp_max_sessions)
        self._listen_per_owner = config.mcp_sessions_per_token
        self._listening: dict[str | None, set[anyio.CancelScope]] = {}  # open listen streams by token id
        self.subscriptions = HandshakeSubscriptions(self._bus)
        self.server: Server[Any] = Server(
            "mcpdb",
            version=__version__,
            instructions="Structured context for LLM applications: instructions, profiles, sessions, guardrails, "
            "tasks and memories per namespace, replicated by Raft; reads are linearizable.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
            on_subscriptions_listen=self._listen_checked,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
        )
        self.sessions = ResumableSessions(
            app=self.server,
            events=EventLog(),
            max_request_body_size=config.max_body_bytes,
            max_sessions=config.mcp_max_sessions,
            max_sessions_per_owner=config.mcp_sessions_per_token,
            streams_per_owner=2 * config.mcp_sessions_per_token,
            session_idle_timeout=config.mcp_idle_timeout,
            # The request gate checks Host and Origin for every path, /mcp included (mcpdb.node.http.host_guard),
            # with the node's --allowed-host names and --allowed-origin origins, which this list would not know.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.asgi = EnvelopeCheck(SessionEndpoint(self.sessions))
        runtime.metrics.add_source(self.metrics)

    def metrics(self) -> Iterator[Metric]:
        yield gauge("mcpdb_mcp_sessions", "MCP sessions open on this node.", self.sessions.open_sessions)
        yield gauge(
            "mcpdb_mcp_subscriptions",
            "Resources watched by this node's MCP sessions (resources/subscribe).",
            len(self.subscriptions),
        )
        yield gauge(
            "mcpdb_mcp_notifications_pending",
            "resources/subscribe notifications waiting for their "
            "session's client to read on (at most one per subscribed resource).",
            self.subscriptions.pending,
        )
        yield gauge(
            "mcpdb_mcp_listen_streams",
            "subscriptions/listen streams open on this node.",
            sum(len(streams) for streams in self._listening.values()),
        )
        yield gauge(
            "mcpdb_mcp_change_listeners",
            "Listeners on this node's MCP change bus (one per subscribed session or listen stream).",
            self._bus.listeners,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.sessions.run():
            sweeper = asyncio.get_running_loop().create_task(self._end_revoked())
            try:
                yield
            finally:
                sweeper.cancel()
                self._listen.close()

    async def _end_revoked(self) -> None:
        """End the sessions and listen streams of tokens revoked since they opened (a request is checked
        only as it starts; streams outlive that)."""
        while True:
            await asyncio.sleep(REVOCATION_CHECK_S)
            revoked = functools.cache(lambda token_id: self._runtime.store.token(token_id) is None)
            await self.sessions.end_revoked(revoked)
            for token_id, streams in list(self._listening.items()):
                if token_id is not None and revoked(token_id):
                    for stream in streams:
                        stream.cancel()

    # ------------------------------------------------------------------ tools
    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._tools.list())

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await self._tools.call(Caller(_principal(ctx), _progress(ctx)), params.name, params.arguments)

    # -------------------------------------------------------------- resources
    async def _readable(
        self, principal: Principal, cursor: str | None, kind: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the contexts ``principal`` may read, in (namespace, id) order, after ``cursor``."""
        await self._runtime.service.read_index(Consistency.linearizable)
        after: tuple[str, str] | None = None
        if cursor:
            namespace, _, context_id = cursor.partition("/")
            after = (namespace, context_id)
        store = self._runtime.store
        if principal.scope_in(ALL_NAMESPACES) is not None:
            items = store.scan(after, kind, PAGE_SIZE)
        else:
            items = []
            for namespace in sorted(ns for ns in principal.scopes if principal.allows(ns, Scope.read)):
                if after is not None and namespace < after[0]:
                    continue
                start = after[1] if after is not None and namespace == after[0] else None
                while len(items) < PAGE_SIZE:
                    page = store.list(namespace, kind, limit=PAGE_SIZE - len(items), cursor=start)
                    items += page.items
                    start = page.next_cursor
                    if start is None:
                        break
                if len(items) == PAGE_SIZE:
                    break
        next_cursor = f"{items[-1]['namespace']}/{items[-1]['id']}" if len(items) == PAGE_SIZE else None
        return items, next_cursor

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        items, next_cursor = await self._readable(_principal(ctx), params.cursor if params else None, None)
        resources = [
            types.Resource(
                uri=context_uri(item["namespace"], item["kind"], item["id"]),
                name=f"{item['namespace']}/{item['id']}",
                title=f"{item['kind']} {item['id']}",
                mime_type="application/json",
            )
            for item in items
        ]
        return types.ListResourcesResult(resources=resources, next_cursor=next_cursor)

    async def _list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template="mcpdb://{namespace}/{kind}/{id}",
                    name="context",
                    mime_type="application/json",
                    description=f"one stored context; kind is one of {', '.join(KINDS)}",
                )
            ]
        )

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        parts = _match_uri(params.uri)
        if parts is None:
            raise _no_resource(
                ctx, params.uri, f"no resource {params.uri!r}: mcpdb's resources are mcpdb://namespace/kind/id"
            )
        namespace, kind, context_id = parts
        try:
            _principal(ctx).check(namespace, Scope.read)  # a namespace hidden from the caller looks missing
            record = await self._runtime.service.get(namespace, context_id)
        except (Hidden, NotFound, InvalidName):
            record = None
        if record is None or record["kind"] != kind:
            raise _no_resource(ctx, params.uri, f"resource {params.uri} does not exist")
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=params.uri, mime_type="application/json", text=orjson.dumps(record).decode()
                )
            ]
        )

    async def _subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        namespace, _, _ = _parse_uri(params.uri)
        _checked(_principal(ctx), namespace)
        await self.subscriptions.subscribe(ctx, params.uri)
        return types.EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        await self.subscriptions.unsubscribe(ctx, params.uri)
        return types.EmptyResult()

    async def _listen_checked(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        principal = _principal(ctx)
        uris = params.notifications.resource_subscriptions or ()
        if len(uris) > MAX_SUBSCRIPTIONS:
            raise MCPError(INVALID_PARAMS, f"one listen stream may watch at most {MAX_SUBSCRIPTIONS} resources")
        for uri in uris:
            _checked(principal, _parse_uri(uri)[0])
        # Listen streams of the 2026 era belong to no session, so the session bounds do not reach them.
        streams = self._listening.setdefault(principal.token_id, set())
        if len(streams) >= self._listen_per_owner:
            raise MCPError(
                INVALID_REQUEST,
                f"this token has {len(streams)} listen streams open on this node, "
                "the most it may (--mcp-sessions-per-token); close one first",
            )
        with anyio.CancelScope() as stream:
            streams.add(stream)
            try:
                return await self._listen(ctx, params)
            finally:
                streams.discard(stream)
                if not streams:
                    self._listening.pop(principal.token_id, None)
        raise MCPError(INVALID_REQUEST, "the token of this listen stream was revoked")

    # ---------------------------------------------------------------- prompts
    async def _list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        items, next_cursor = await self._readable(_principal(ctx), params.cursor if params else None, "instruction")
        prompts = []
        for item in items:
            names = dict.fromkeys(_PLACEHOLDER.findall(item["text"]))
            arguments = [types.PromptArgument(name=name, required=True) for name in names]
            arguments.append(types.PromptArgument(name="message", description="the user's message", required=False))
            domains = f" ({', '.join(item['domains'])})" if item["domains"] else ""
            prompts.append(
                types.Prompt(
                    name=f"{item['namespace']}/{item['id']}",
                    title=item["role"],
                    description=f"{item['role']}{domains}",
                    arguments=arguments,
                )
            )
        return types.ListPromptsResult(prompts=prompts, next_cursor=next_cursor)

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        namespace, _, context_id = params.name.partition("/")
        _checked(_principal(ctx), namespace)
        try:
            record = await self._runtime.service.get(namespace, context_id)
        except (NotFound, ValueError):
            record = None
        if record is None or record["kind"] != "instruction":
            raise MCPError(INVALID_PARAMS, f"prompt {params.name} does not exist")
        arguments = params.arguments or {}
        missing = [name for name in dict.fromkeys(_PLACEHOLDER.findall(record["text"])) if name not in arguments]
        if missing:
            raise MCPError(INVALID_PARAMS, f"prompt {params.name} needs the arguments {', '.join(missing)}")
        text = _PLACEHOLDER.sub(lambda m: str(arguments[m[1]]), record["text"])
        messages = [types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))]
        if arguments.get("message"):
            messages.append(
                types.PromptMessage(role="user", content=types.TextContent(type="text", text=arguments["message"]))
            )
        return types.GetPromptResult(description=record["role"], messages=messages)
