"""ASGI middleware for every request: bearer-token check and request-size limit.

Written as plain ASGI (not Starlette's BaseHTTPMiddleware) because it runs on
every request and must not add a task hop per call.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

ASGIApp = Any
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz"})


async def _send_error(send: Any, status: int, error: str, message: str,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps({"error": error, "message": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` on every path except health checks."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] in UNAUTHENTICATED_PATHS:
            await self.app(scope, receive, send)
            return
        presented = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(presented, self.expected):
            await _send_error(send, 401, "unauthorized", "missing or wrong bearer token",
                              [(b"www-authenticate", b'Bearer realm="mcpdb"')])
            return
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuses bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        await _send_error(send, 413, "body_too_large",
                          f"request body exceeds the limit of {self.limit} bytes (--max-body-bytes)")


class JsonBodies:
    """Treats every /v1 request body as JSON, whatever its Content-Type says.

    ``curl -d`` sends ``application/x-www-form-urlencoded``; FastAPI would then
    not parse the body and report a confusing schema error. Dropping a
    non-JSON Content-Type lets FastAPI's lenient mode parse it as JSON, so a
    bad body gets the precise 400/422 it deserves.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = scope["headers"]
            if any(k == b"content-type" and not v.startswith(b"application/json") for k, v in headers):
                scope = {**scope, "headers": [(k, v) for k, v in headers if k != b"content-type"]}
        await self.app(scope, receive, send)
