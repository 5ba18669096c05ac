"""The two hottest routes, ``GET`` and ``PUT /v1/namespaces/{ns}/contexts/{id}``, answered without
FastAPI's stack.

Profiled under the kv benchmark's loads (wrk, 32 connections, py-spy on a node): FastAPI's and
Starlette's layers around the endpoint (error, telemetry, body-limit, exception and exit-stack
middlewares, routing, parameter extraction, body validation through its dependency solver) took about
35% of the event-loop thread of a follower serving reads, the endpoint itself 13%; under writes, about
11% of all the leader's samples (Raft thread included) against 4% for the endpoint. This ASGI wrapper
serves those requests through the same ``ContextService`` calls and the same error responses as the
FastAPI routes, which still document them in OpenAPI and answer everything else:

- a GET with no query, or only ``?consistency=linearizable|stale``;
- a PUT with no query whose body FastAPI would accept as it is: a JSON content type (the request
  gate answers 415 to a body without one; FastAPI, strict about content types, would refuse it
  too), a body that parses and ``ContextIn`` validates, at most one ``If-Match``
  and ``If-None-Match``. Any other PUT, a body FastAPI would refuse with 422 among them, is handed to
  FastAPI with its body replayed, so FastAPI's answer stays the reference for every refusal.

The body is parsed by the standard ``json`` module, as Starlette's ``Request.json`` parses it, not by
orjson: orjson reads an integer past 64 bits as a float (a silent change of the stored value, where
FastAPI's route refuses it with 422 ``invalid_value``) and refuses NaN, which ``json`` reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from typing import Any

from pydantic import BaseModel

from mcpdb.errors import McpdbServerError
from mcpdb.model import CONTEXT_IN_ADAPTER
from mcpdb.node.http.access import CONFIRMED_KEY
from mcpdb.node.http.conditions import expected_version
from mcpdb.node.http.request_stats import RequestStats
from mcpdb.node.http.responses import FastJSON, error_for, versioned
from mcpdb.service import Confirmed, Consistency, ContextService

_CONTEXT_PATH = re.compile(r"^/v1/namespaces/([^/]+)/contexts/([^/]+)$")
_QUERIES = {
    b"": Consistency.linearizable,
    b"consistency=linearizable": Consistency.linearizable,
    b"consistency=stale": Consistency.stale,
}
_WRITE_HEADERS = (b"content-type", b"if-match", b"if-none-match")


class FastContextRoutes:
    def __init__(self, app: Any, service: ContextService, stats: RequestStats) -> None:
        self.app = app
        self.service = service
        self.stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            method, query = scope["method"], scope.get("query_string", b"")
            consistency = _QUERIES.get(query) if method == "GET" else None
            if consistency is not None or (method == "PUT" and not query):
                match = _CONTEXT_PATH.match(scope["path"])
                if match is not None and consistency is not None:
                    confirmed = scope.get(CONFIRMED_KEY)
                    await self._answer(scope, receive, send, self._get(match[1], match[2], consistency, confirmed))
                    return
                if match is not None:
                    await self._put(scope, receive, send, match[1], match[2])
                    return
        await self.app(scope, receive, send)

    async def _get(
        self, namespace: str, context_id: str, consistency: Consistency, confirmed: Confirmed | None
    ) -> FastJSON:
        record = await self.service.get(namespace, context_id, consistency, confirmed)
        return versioned(record, record["version"])

    async def _put(self, scope: dict[str, Any], receive: Any, send: Any, namespace: str, context_id: str) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client left, or the request gate answered already (413, 408)
        headers = _single_headers(scope["headers"])
        context = _context_as_fastapi_reads_it(headers, body) if headers is not None else None
        if headers is None or context is None:
            await self.app(scope, _replaying(body, receive), send)
            return
        await self._answer(scope, receive, send, self._write(namespace, context_id, context, headers))

    async def _write(
        self, namespace: str, context_id: str, context: BaseModel, headers: dict[bytes, bytes]
    ) -> FastJSON:
        expected = expected_version(_text(headers, b"if-match"), _text(headers, b"if-none-match"))
        result = await self.service.put(namespace, context_id, context, expected)
        return versioned(result, result["version"], 201 if result["created"] else 200)

    async def _answer(self, scope: dict[str, Any], receive: Any, send: Any, outcome: Awaitable[FastJSON]) -> None:
        """Send what ``outcome`` renders, or the response for an mcpdb error, counted at its status. Any
        other exception is counted as the 500 uvicorn answers for it (FastAPI's route counts its own
        500 too) and raised, for uvicorn to log."""
        try:
            response = await outcome
        except McpdbServerError as error:
            response = error_for(error)
        except Exception:
            self.stats.answered(scope, 500)
            raise
        self.stats.answered(scope, response.status_code)
        await response(scope, receive, send)


async def _read_body(receive: Any) -> bytes | None:
    """The whole request body, or None if a disconnect came first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _single_headers(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes] | None:
    """The write's headers, or None if one of them is repeated (FastAPI then decides what it means)."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in _WRITE_HEADERS:
            if name in found:
                return None
            found[name] = value
    return found


def _text(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")  # as Starlette decodes header values


def _context_as_fastapi_reads_it(headers: dict[bytes, bytes], body: bytes) -> BaseModel | None:
    """The context FastAPI would pass to ``put_context``, or None where FastAPI should answer."""
    content_type = headers.get(b"content-type", b"")
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        return None
    try:
        context: BaseModel = CONTEXT_IN_ADAPTER.validate_python(json.loads(body))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, or not a context (ValidationError)
        return None
    return context


def _replaying(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the body already read to the app, then waits as ``receive`` does."""
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return dict(await receive())
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
