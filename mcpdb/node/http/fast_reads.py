"""The hottest route, ``GET /v1/namespaces/{ns}/contexts/{id}``, answered without FastAPI's stack.

Profiled under the kv benchmark's read load (wrk, 32 connections, py-spy on
a follower): FastAPI's and Starlette's layers around the endpoint (error,
telemetry, body-limit, exception and exit-stack middlewares, routing,
parameter extraction) took about 35% of the event-loop thread, the endpoint
itself 13%. This ASGI wrapper serves exactly that request - no query, or
``?consistency=linearizable|stale`` - through the same ``ContextService.get``
and the same error responses as the FastAPI route; every other request,
including that path with any other query, goes to FastAPI, which also still
documents the route in OpenAPI.
"""

from __future__ import annotations

import re
from typing import Any

from mcpdb.errors import McpdbServerError
from mcpdb.node.http.request_stats import RequestStats
from mcpdb.node.http.responses import FastJSON, error_for
from mcpdb.service import Consistency, ContextService

_CONTEXT_PATH = re.compile(r"^/v1/namespaces/([^/]+)/contexts/([^/]+)$")
_QUERIES = {
    b"": Consistency.linearizable,
    b"consistency=linearizable": Consistency.linearizable,
    b"consistency=stale": Consistency.stale,
}


class FastContextReads:
    def __init__(self, app: Any, service: ContextService, stats: RequestStats) -> None:
        self.app = app
        self.service = service
        self.stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        consistency = _QUERIES.get(scope.get("query_string", b"")) if scope["type"] == "http" else None
        match = _CONTEXT_PATH.match(scope["path"]) if consistency is not None and scope["method"] == "GET" else None
        if match is None or consistency is None:
            await self.app(scope, receive, send)
            return
        try:
            record = await self.service.get(match[1], match[2], consistency)
        except McpdbServerError as error:
            response = error_for(error)
        else:
            response = FastJSON(record, headers={"ETag": f'"{record["version"]}"'})
        self.stats.answered(scope, response.status_code)
        await response(scope, receive, send)
