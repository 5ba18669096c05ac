"""JSON responses shared by the node's routers: orjson rendering and one error shape."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Path
from fastapi.responses import JSONResponse

from mcpdb.auth import Forbidden, Hidden
from mcpdb.model import CONTEXT_ID_PATTERN, NAMESPACE_PATTERN, InvalidName
from mcpdb.raft.replication import Indeterminate, Unavailable, Unserializable
from mcpdb.service import NotFound, Refused
from mcpdb.store.changes import InvalidCursor
from mcpdb.store.state_machine import HistoryTrimmed

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


def error_response(status: int, error: str, message: str, **extra: Any) -> FastJSON:
    """``{"error": code, "message": ...}``; ``retry_after`` becomes the Retry-After header."""
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return FastJSON({"error": error, "message": message, **extra}, status_code=status, headers=headers)


class InvalidHeader(ValueError):
    """A request header that cannot mean anything (400)."""


# The request-level failures every route may raise, each with its status.
DOMAIN_ERRORS = (
    InvalidName,
    InvalidHeader,
    InvalidCursor,
    NotFound,
    Refused,
    Unavailable,
    HistoryTrimmed,
    Hidden,
    Forbidden,
    Unserializable,
)


def error_parts(exc: Exception) -> tuple[int, str, str, dict[str, Any]]:
    """Status, error code, message and extra fields for one of DOMAIN_ERRORS: 400 bad name, header or
    watch cursor; 422 a value JSON cannot store; 403 scope too weak; 404 (also a namespace the token holds
    no scope in); 410 history trimmed; 409 (400 for an invalid command); 503 with Retry-After and whether
    a write certainly did not apply. Shared by the HTTP error responses, the chat worker's error events
    and the MCP tools' errors."""
    if isinstance(exc, InvalidName):
        return 400, "invalid_name", str(exc), {}
    if isinstance(exc, InvalidHeader):
        return 400, "invalid_header", str(exc), {}
    if isinstance(exc, Unserializable):
        return 422, "invalid_value", str(exc), {}
    if isinstance(exc, InvalidCursor):
        return 400, "invalid_cursor", str(exc), {}
    if isinstance(exc, HistoryTrimmed):
        return 410, "compacted", str(exc), {"oldest_version": exc.oldest}
    if isinstance(exc, NotFound):
        return 404, "not_found", exc.message, {}
    if isinstance(exc, Hidden):
        return 404, "not_found", str(exc), {}
    if isinstance(exc, Forbidden):
        return 403, "forbidden", str(exc), {}
    if isinstance(exc, Refused):
        return (
            (400 if exc.error == "invalid_command" else 409),
            exc.error,
            exc.message,
            {"current_version": exc.current_version},
        )
    if isinstance(exc, Unavailable):
        applied = "unknown" if isinstance(exc, Indeterminate) else "no"
        return 503, "unavailable", str(exc), {"applied": applied, "retry_after": exc.retry_after}
    raise TypeError(f"not a request-level error: {exc!r}")


def error_for(exc: Exception) -> FastJSON:
    """The HTTP response for one of DOMAIN_ERRORS."""
    status, error, message, extra = error_parts(exc)
    return error_response(status, error, message, **extra)
