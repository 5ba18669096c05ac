"""The gate every request passes before FastAPI: token, JSON bodies, size limit.

One plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which adds a
task hop per request, and not three stacked ones, which add three awaits):
it runs on every request of the hot paths.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

ASGIApp = Any
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _send_error(send: Any, status: int, error: str, message: str,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps({"error": error, "message": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGate:
    """Bearer token, JSON bodies whatever their Content-Type, and the body-size limit.

    - ``Authorization: Bearer <token>`` on every path except health checks
      (constant-time comparison), when the node has a token.
    - ``curl -d`` sends ``application/x-www-form-urlencoded``; FastAPI would
      then not parse the body and report a confusing schema error. Dropping a
      non-JSON Content-Type on /v1 lets FastAPI's lenient mode parse it as
      JSON, so a bad body gets the precise 400/422 it deserves.
    - Bodies over ``max_body_bytes`` get 413, by Content-Length or while
      streaming, before the application buffers them.
    """

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.limit = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in UNAUTHENTICATED_PATHS:
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                await _send_error(send, 401, "unauthorized", "missing or wrong bearer token",
                                  [(b"www-authenticate", b'Bearer realm="mcpdb"')])
                return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        content_type = headers.get(b"content-type")
        if content_type is not None and scope["path"].startswith("/v1/") \
                and not content_type.startswith(b"application/json"):
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]}
        await self._limited(scope, receive, send)

    async def _limited(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        received = 0
        answered = False  # a response (the app's or our 413) has started

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Answer 413 now and show the app a disconnect: raising
                    # here would let the framework turn it into a 400.
                    if not answered:
                        answered = True
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                if answered:
                    return
                answered = True
            elif received > self.limit:
                return  # the app's reply to the disconnect; the client has our 413
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Any) -> None:
        await _send_error(send, 413, "body_too_large",
                          f"request body exceeds the limit of {self.limit} bytes (--max-body-bytes)")
