"""The gate every request passes before FastAPI: Host/Origin, token, access, rate limit, body size,
and a namespace's share of the node's bulk writes.

One plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which adds a
task hop per request, and not three stacked ones, which add three awaits):
it runs on every request of the hot paths.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import Counter
from typing import Any

import orjson

from mcpdb.auth import ROOT, Principal
from mcpdb.errors import Overloaded, Unavailable
from mcpdb.node.http.access import (
    CONFIRMED_KEY,
    PRINCIPAL_KEY,
    PUBLIC_PATHS,
    Authenticator,
    namespace_path,
    path_refusal,
    token_check_scope,
)
from mcpdb.node.http.host_guard import WRITE_METHODS, HostGuard
from mcpdb.node.http.rate_limit import TokenBuckets
from mcpdb.node.http.request_stats import STARTED_KEY, RequestStats
from mcpdb.raft.command_lanes import BULK_BYTES

ASGIApp = Any
# Query parameters a route reads as a list; any other may appear once. FastAPI takes the last of a
# repeated one, a gateway or log in front may take the first: ``user_id=ada&user_id=bob`` checked as
# ada and served as bob.
REPEATABLE_PARAMETERS = frozenset({"tags"})
# Bulk writes (a batch, or any write into a namespace of ``BULK_BYTES`` or more, up to a megabyte
# each) of one namespace a node reads, validates and waits on at once; past it one is refused before
# its body is read. An outside probe's 28 connections sending one namespace's 500-context batches
# without pause, refused at the leader's bulk lane, made every node parse ~30 MB/s of bodies it would
# then refuse (``mcpdb bench flood`` measures it). Per namespace and not per node, so
# that slow bodies (each may take ``body_timeout``) hold up only their own namespace's writes. Four
# per node keep the leader's bulk lane, which applies one at a time, busy.
BULK_WRITES_PER_NAMESPACE = 4
BULK_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _large(declared_length: bytes | None) -> bool:
    """Whether a body is ``BULK_BYTES`` or more, or of no declared length (chunked: it may be any size)."""
    return declared_length is None or not declared_length.isdigit() or int(declared_length) >= BULK_BYTES


def bulk_namespace(method: str, path: str, declared_length: bytes | None) -> str | None:
    """The namespace of a write that may carry a bulk proposal: a batch, or a write into a namespace
    whose body is ``BULK_BYTES`` or more or of no declared length (chunked); else None."""
    named = namespace_path(path) if method in BULK_METHODS else None
    if named is None or not named[1]:
        return None
    namespace, rest = named
    return namespace if (method == "POST" and rest == "batch") or _large(declared_length) else None


MCP_PATH = "/mcp"


def bulk_share(method: str, path: str, declared_length: bytes | None, principal: Principal) -> str | None:
    """Whose share of the node's bulk writes a request counts in (None: it may carry no bulk proposal).
    A REST write: its namespace's (``bulk_namespace``). An MCP request of ``BULK_BYTES`` or more, or
    of no declared length: its token's, since the namespace is inside a JSON-RPC body the gate does
    not read (a tool may write a context of up to ``max_body_bytes``). A space keeps the two apart:
    no namespace holds one."""
    if path == MCP_PATH and method == "POST":
        return f"mcp {principal.token_id or 'root'}" if _large(declared_length) else None
    return bulk_namespace(method, path, declared_length)


def repeated_parameter(query_string: bytes) -> str | None:
    """The first query parameter named twice that may appear only once (None: none)."""
    seen: set[str] = set()
    for name, _ in urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in seen and name not in REPEATABLE_PARAMETERS:
            return name
        seen.add(name)
    return None


class RequestGate:
    """Host and Origin, bearer token, access rules, rate limits, body size.

    - A request a browser may have been tricked into sending (foreign Host,
      foreign Origin, a body that is not JSON, a bodyless form post) or one
      whose Host, Origin, Content-Type, Content-Length or Authorization the
      frameworks behind could read differently (repeated) is refused first,
      whatever its path or token (see mcpdb.node.http.host_guard); so is a
      query parameter named twice, but for ``tags`` (400 repeated_parameter). Only HTTP
      and lifespan scopes pass: a WebSocket would skip every rule here, and
      the node serves none.
    - ``Authorization: Bearer <token>`` on every path except health checks,
      when the node has a bootstrap token (see mcpdb.node.http.access); the principal is
      left in the ASGI scope for routes that check namespaces of their own.
    - A token with a rate limit gets 429 with Retry-After past it.
    - Bodies over ``max_body_bytes`` get 413, by Content-Length or while
      streaming, before the application buffers them.
    - Its own answers are counted by route and status with their latency
      (the fast read path and TimedApp count the others, see request_stats).
    - A body not received in full within ``body_timeout`` seconds (a client
      trickling it, or gone quiet) gets 408, and the request never reaches
      a route, so nothing is written.
    - A namespace has at most ``BULK_WRITES_PER_NAMESPACE`` bulk writes in
      flight on the node (``bulk_namespace``), and a token as many large MCP
      requests (``bulk_share``); past it 503 with Retry-After and ``applied:
      no``, before the body is read.
    """

    def __init__(
        self,
        app: ASGIApp,
        guard: HostGuard,
        authenticator: Authenticator,
        max_body_bytes: int,
        body_timeout: float,
        stats: RequestStats,
    ) -> None:
        self.app = app
        self.guard = guard
        self.stats = stats
        self.authenticator = authenticator
        self.limit = max_body_bytes
        self.body_timeout = body_timeout
        self.buckets = TokenBuckets()
        self.bulk_writes: Counter[str] = Counter()  # in flight, by namespace or MCP token (``bulk_share``)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            elif scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})  # before accepting: uvicorn answers 403
            return
        scope[STARTED_KEY] = time.perf_counter()
        refused = self.guard.refusal(scope["method"], scope["headers"])
        if refused is not None:
            await self._answer(scope, send, refused.status, refused.error, refused.message)
            return
        repeated = repeated_parameter(scope.get("query_string", b""))
        if repeated is not None:
            message = f"the query parameter {repeated} may appear only once"
            await self._answer(scope, send, 400, "repeated_parameter", message)
            return
        headers = dict(scope["headers"])  # the guarded headers are unique now: first and last agree
        if not self.authenticator.enabled:
            scope[PRINCIPAL_KEY] = ROOT  # no bootstrap token: everyone is root, nothing to check
        elif scope["path"] not in PUBLIC_PATHS and not await self._admitted(scope, headers, send):
            return
        if scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._answer(scope, send, 413, "body_too_large", self._too_large)
            return
        share = bulk_share(scope["method"], scope["path"], declared, scope[PRINCIPAL_KEY])
        if share is None:
            await self._limited(scope, receive, send)
        elif self.bulk_writes[share] >= BULK_WRITES_PER_NAMESPACE:
            whose = "this token's MCP requests have" if share.startswith("mcp ") else f"{share} already has"
            refusal = Overloaded(
                f"{whose} {BULK_WRITES_PER_NAMESPACE} bulk writes (batches, or writes of "
                f"{BULK_BYTES // 1024} KiB or more) in flight on this node, the share of each; retry after a moment"
            )
            retry = [(b"retry-after", str(refusal.retry_after).encode())]
            await self._answer(scope, send, 503, refusal.code, str(refusal), retry, refusal.fields())
        else:
            self.bulk_writes[share] += 1
            try:
                await self._limited(scope, receive, send)
            finally:
                self.bulk_writes[share] -= 1
                if not self.bulk_writes[share]:
                    del self.bulk_writes[share]

    async def _admitted(self, scope: dict[str, Any], headers: dict[bytes, bytes], send: Any) -> bool:
        """Authenticate, apply the path's access rule and the token's rate limit; answer if refused."""
        try:
            principal, confirmed = await self.authenticator.principal(
                headers.get(b"authorization"),
                token_check_scope(scope["method"], scope["path"], scope.get("query_string", b"")),
            )
        except Unavailable as error:
            await self._answer(
                scope,
                send,
                503,
                "unavailable",
                f"cannot check the token now: {error}",
                [(b"retry-after", str(error.retry_after).encode())],
            )
            return False
        if principal is None:
            await self._answer(
                scope,
                send,
                401,
                "unauthorized",
                "missing, wrong or revoked bearer token",
                [(b"www-authenticate", b'Bearer realm="mcpdb"')],
            )
            return False
        refusal = None if principal is ROOT else path_refusal(principal, scope["method"], scope["path"])
        if refusal is not None:
            await self._answer(scope, send, refusal.status, refusal.error, refusal.message)
            return False
        if principal.rate_limit is not None and principal.token_id is not None:
            wait = self.buckets.take(principal.token_id, principal.rate_limit)
            if wait:
                await self._answer(
                    scope,
                    send,
                    429,
                    "rate_limited",
                    f"this token is limited to {principal.rate_limit:g} requests/s per node",
                    [(b"retry-after", str(max(1, round(wait))).encode())],
                )
                return False
        scope[PRINCIPAL_KEY] = principal
        if confirmed is not None:
            scope[CONFIRMED_KEY] = confirmed
        return True

    async def _limited(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        received = 0
        app_answered = False  # the app's response has started
        refused = False  # we answered 413 or 408 ourselves; the app only ever sees a disconnect
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def refuse(status: int, error: str, message: str) -> dict[str, Any]:
            nonlocal refused
            if not refused and not app_answered:
                refused = True
                await self._answer(scope, send, status, error, message)
            # Raising here would let the framework turn it into a 400.
            return {"type": "http.disconnect"}

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect while a response streams: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await refuse(
                    408, "request_timeout", f"the request body did not arrive within {self.body_timeout:g} s"
                )
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.limit:
                    return await refuse(413, "body_too_large", self._too_large)
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal app_answered
            if refused:
                return  # the app's reply to the disconnect; the client has our answer
            app_answered = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _answer(
        self,
        scope: dict[str, Any],
        send: Any,
        status: int,
        error: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """A JSON error answer, sent before (or instead of) the application's."""
        self.stats.answered(scope, status)
        body = orjson.dumps({"error": error, "message": message, **(fields or {})})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @property
    def _too_large(self) -> str:
        return f"request body exceeds the limit of {self.limit} bytes (--max-body-bytes)"
