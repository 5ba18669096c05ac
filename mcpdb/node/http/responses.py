"""JSON responses shared by the node's routers: orjson rendering and one error shape."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Path
from fastapi.responses import JSONResponse

from mcpdb.errors import McpdbServerError
from mcpdb.model import CONTEXT_ID_PATTERN, NAMESPACE_PATTERN

# Path parameters as documented in OpenAPI. The pattern is documentation only: the service checks
# names itself and answers 400 invalid_name (a 422 from FastAPI would say less).
NamespacePath = Annotated[
    str, Path(description="1-63 of a-z 0-9 _ -", json_schema_extra={"pattern": NAMESPACE_PATTERN})
]
ContextIdPath = Annotated[
    str, Path(description="1-128 of A-Z a-z 0-9 _ . : @ -", json_schema_extra={"pattern": CONTEXT_ID_PATTERN})
]


class FastJSON(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def versioned(body: dict[str, Any], version: int, status: int = 200) -> FastJSON:
    """A context route's answer: ``body`` with the version as its ETag. Rendered here, which skips
    FastAPI's jsonable_encoder walk over the whole body, a measurable share of a read's CPU."""
    return FastJSON(body, status_code=status, headers={"ETag": f'"{version}"'})


def error_response(status: int, error: str, message: str, **extra: Any) -> FastJSON:
    """``{"error": code, "message": ...}``; ``retry_after`` becomes the Retry-After header."""
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return FastJSON({"error": error, "message": message, **extra}, status_code=status, headers=headers)


# The request-level failures every route may raise, each with its status.
def error_parts(exc: McpdbServerError) -> tuple[int, str, str, dict[str, Any]]:
    """Status, error code, message and extra fields (``retry_after`` becomes Retry-After) of a request-level
    error. Shared by the HTTP error responses, the chat worker's error events and the MCP tools' errors."""
    return exc.status, exc.code, str(exc), exc.fields()


def error_for(exc: McpdbServerError) -> FastJSON:
    """The HTTP response for a request-level error (the tree of mcpdb.errors)."""
    status, error, message, extra = error_parts(exc)
    return error_response(status, error, message, **extra)
