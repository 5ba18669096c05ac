"""JSON-RPC 2.0 envelopes checked before the SDK's handshake-era transport sees them.

That transport answers a body that parses as JSON but is no JSON-RPC message
(no ``method``, ``"jsonrpc": "1.0"``, a batch) with -32602 Invalid params and
a pydantic dump; JSON-RPC says -32600 Invalid Request, and a short reason is
what a client author can act on. Bodies that are not JSON at all are left to
the SDK (-32700), as is everything it would accept. The request gate has
already bounded the body's size and time.
"""

from __future__ import annotations

from typing import Any

import orjson
from mcp_types import INVALID_REQUEST, jsonrpc_message_adapter
from pydantic import ValidationError

ASGIApp = Any


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def envelope_problem(message: Any) -> str | None:
    """Why ``message`` (decoded JSON) is not a JSON-RPC 2.0 request, notification or response; None if it is."""
    try:
        jsonrpc_message_adapter.validate_python(message, by_name=False)
        return None
    except ValidationError:
        pass
    if isinstance(message, list):
        return "batches are not supported: send one JSON-RPC message per request"
    if not isinstance(message, dict):
        return "the body must be a JSON-RPC 2.0 message (an object)"
    if message.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    if "method" not in message and "result" not in message and "error" not in message:
        return "a request needs a method"
    if "method" in message and not isinstance(message["method"], str):
        return "method must be a string"
    if "id" in message and not _is_id(message["id"]):
        return "id must be a string or an integer"
    if "params" in message and not isinstance(message["params"], dict):
        return "params must be an object"
    return "not a JSON-RPC 2.0 request, notification or response"


class EnvelopeCheck:
    """An ASGI wrapper: a POST whose JSON is no JSON-RPC message gets 400 with a -32600 error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError:
            decoded = problem = None
        else:
            problem = envelope_problem(decoded)
        if problem is not None:
            request_id = decoded.get("id") if isinstance(decoded, dict) and _is_id(decoded.get("id")) else None
            answer = orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": {"code": INVALID_REQUEST, "message": f"Invalid Request: {problem}"},
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": answer})
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
