"""The Model Context Protocol server of a node (official ``mcp`` SDK), at ``/mcp`` (streamable HTTP).

- Resources: every context the caller may read, as ``mcpdb://{namespace}/{kind}/{id}``
  (JSON), listed page by page and read linearizably; the template lets a
  client address one directly.
- Subscriptions: ``resources/subscribe`` (handshake era) and
  ``subscriptions/listen`` (2026-07-28 era) both ride on the node's change
  feed, the same history ``/watch`` streams: a change to a subscribed context
  sends ``notifications/resources/updated`` for its URI.
- Tools: see nodes.mcp_tools. Prompts: stored instructions, ``{{name}}``
  placeholders in their text becoming the prompt's arguments.

Every request went through the REST gate first, so the caller's principal
sits in the HTTP request's scope; each handler checks its namespaces with it.
``mcpdb mcp`` relays a desktop client's stdio to this endpoint (cli/mcp_stdio.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import mcp_types as types
import orjson
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.subscriptions import ListenHandler, ResourceUpdated, ServerEvent
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from mcpdb import __version__
from mcpdb.auth import ALL_NAMESPACES, Forbidden, Hidden, Principal, Scope
from mcpdb.model import KINDS
from mcpdb.service import Consistency, NotFound
from mcpdb.store import HistoryTrimmed
from mcpdb.watch import Cursor
from nodes.access import principal_of
from nodes.config import split_host_port
from nodes.mcp_tools import ContextTools

_log = logging.getLogger(__name__)

_URI = re.compile(r"^mcpdb://([^/]+)/([a-z]+)/([^/]+)$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
PAGE_SIZE = 100
FEED_IDLE_S = 30.0


def context_uri(namespace: str, kind: str, context_id: str) -> str:
    return f"mcpdb://{namespace}/{kind}/{context_id}"


def _parse_uri(uri: str) -> tuple[str, str, str]:
    match = _URI.match(uri)
    if match is None or match[2] not in KINDS:
        raise MCPError(INVALID_PARAMS, f"not an mcpdb resource URI: {uri!r} (mcpdb://namespace/kind/id)")
    return match[1], match[2], match[3]


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


class ChangeBus:
    """The SDK's subscription bus, fed by the node's change feed only while someone listens
    (so a node without MCP subscribers pays nothing per commit)."""

    def __init__(self, runtime: Any) -> None:
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


class HandshakeSubscriptions:
    """``resources/subscribe`` of the handshake era: per session, a set of URIs and one bus listener
    that sends ``notifications/resources/updated`` on that session."""

    def __init__(self, bus: ChangeBus) -> None:
        self._bus = bus
        self._sessions: dict[ServerSession, tuple[set[str], Callable[[], None]]] = {}

    async def subscribe(self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        namespace, _, _ = _parse_uri(params.uri)
        _checked(_principal(ctx), namespace)
        session = ctx.session
        if session not in self._sessions:
            uris: set[str] = set()
            loop = asyncio.get_running_loop()

            def deliver(event: ServerEvent) -> None:
                if isinstance(event, ResourceUpdated) and event.uri in uris:
                    loop.create_task(self._notify(session, event.uri))
            self._sessions[session] = (uris, self._bus.subscribe(deliver))
        self._sessions[session][0].add(params.uri)
        return types.EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any, Any],
                          params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        entry = self._sessions.get(ctx.session)
        if entry is not None:
            entry[0].discard(params.uri)
            if not entry[0]:
                self._drop(ctx.session)
        return types.EmptyResult()

    async def _notify(self, session: ServerSession, uri: str) -> None:
        try:
            await session.send_resource_updated(uri)
        except Exception:  # noqa: BLE001 - the session is gone: forget its subscriptions
            self._drop(session)

    def _drop(self, session: ServerSession) -> None:
        entry = self._sessions.pop(session, None)
        if entry is not None:
            entry[1]()


class McpServer:
    """The MCP server of one node (``runtime``: its NodeRuntime) and its ASGI endpoint."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._tools = ContextTools(runtime)
        self._bus = ChangeBus(runtime)
        self._listen = ListenHandler(self._bus)
        self._handshake = HandshakeSubscriptions(self._bus)
        self.server: Server[Any] = Server(
            "mcpdb", version=__version__,
            instructions="Structured context for LLM applications: instructions, profiles, sessions, guardrails, "
                         "tasks and memories per namespace, replicated by Raft; reads are linearizable.",
            on_list_tools=self._list_tools, on_call_tool=self._call_tool,
            on_list_resources=self._list_resources, on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_subscribe_resource=self._handshake.subscribe, on_unsubscribe_resource=self._handshake.unsubscribe,
            on_subscriptions_listen=self._listen_checked,
            on_list_prompts=self._list_prompts, on_get_prompt=self._get_prompt,
        )
        host, _ = split_host_port(runtime.config.http_addr, "--http-addr")
        hosts = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
        self.sessions = StreamableHTTPSessionManager(
            app=self.server,
            max_request_body_size=runtime.config.max_body_bytes,
            # DNS-rebinding protection: only requests addressed to this node's own names.
            security_settings=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=[f"{name}:*" for name in hosts],
                allowed_origins=[f"http://{name}:*" for name in hosts]),
        )
        self.asgi = StreamableHTTPASGIApp(self.sessions)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.sessions.run():
            yield
            self._listen.close()

    # ------------------------------------------------------------------ tools
    async def _list_tools(self, ctx: ServerRequestContext[Any, Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._tools.list())

    async def _call_tool(self, ctx: ServerRequestContext[Any, Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        return await self._tools.call(_principal(ctx), params.name, params.arguments)

    # -------------------------------------------------------------- resources
    async def _readable(self, principal: Principal, cursor: str | None, kind: str | None) -> tuple[list[dict[str, Any]], str | None]:
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

    async def _list_resources(self, ctx: ServerRequestContext[Any, Any],
                              params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        items, next_cursor = await self._readable(_principal(ctx), params.cursor if params else None, None)
        resources = [types.Resource(uri=context_uri(item["namespace"], item["kind"], item["id"]),
                                    name=f"{item['namespace']}/{item['id']}", title=f"{item['kind']} {item['id']}",
                                    mime_type="application/json") for item in items]
        return types.ListResourcesResult(resources=resources, next_cursor=next_cursor)

    async def _list_templates(self, ctx: ServerRequestContext[Any, Any],
                              params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[types.ResourceTemplate(
            uri_template="mcpdb://{namespace}/{kind}/{id}", name="context", mime_type="application/json",
            description=f"one stored context; kind is one of {', '.join(KINDS)}")])

    async def _read_resource(self, ctx: ServerRequestContext[Any, Any],
                             params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        namespace, kind, context_id = _parse_uri(params.uri)
        _checked(_principal(ctx), namespace)
        try:
            record = await self._runtime.service.get(namespace, context_id)
        except NotFound:
            record = None
        if record is None or record["kind"] != kind:
            raise MCPError(INVALID_PARAMS, f"resource {params.uri} does not exist")
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=params.uri, mime_type="application/json", text=orjson.dumps(record).decode())])

    async def _listen_checked(self, ctx: ServerRequestContext[Any, Any],
                              params: types.SubscriptionsListenRequestParams) -> types.SubscriptionsListenResult:
        principal = _principal(ctx)
        for uri in params.notifications.resource_subscriptions or ():
            _checked(principal, _parse_uri(uri)[0])
        return await self._listen(ctx, params)

    # ---------------------------------------------------------------- prompts
    async def _list_prompts(self, ctx: ServerRequestContext[Any, Any],
                            params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        items, next_cursor = await self._readable(_principal(ctx), params.cursor if params else None, "instruction")
        prompts = []
        for item in items:
            names = dict.fromkeys(_PLACEHOLDER.findall(item["text"]))
            arguments = [types.PromptArgument(name=name, required=True) for name in names]
            arguments.append(types.PromptArgument(name="message", description="the user's message", required=False))
            domains = f" ({', '.join(item['domains'])})" if item["domains"] else ""
            prompts.append(types.Prompt(name=f"{item['namespace']}/{item['id']}", title=item["role"],
                                        description=f"{item['role']}{domains}", arguments=arguments))
        return types.ListPromptsResult(prompts=prompts, next_cursor=next_cursor)

    async def _get_prompt(self, ctx: ServerRequestContext[Any, Any],
                          params: types.GetPromptRequestParams) -> types.GetPromptResult:
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
            messages.append(types.PromptMessage(role="user", content=types.TextContent(
                type="text", text=arguments["message"])))
        return types.GetPromptResult(description=record["role"], messages=messages)
