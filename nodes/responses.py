"""JSON responses shared by the node's routers: orjson rendering and one error shape."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

from mcpdb.auth import Forbidden, Hidden
from mcpdb.model import InvalidName
from mcpdb.replication import Indeterminate, Unavailable
from mcpdb.service import NotFound, Refused
from mcpdb.store import HistoryTrimmed
from mcpdb.watch import InvalidCursor


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
DOMAIN_ERRORS = (InvalidName, InvalidHeader, InvalidCursor, NotFound, Refused, Unavailable, HistoryTrimmed,
                 Hidden, Forbidden)


def error_parts(exc: Exception) -> tuple[int, str, str, dict[str, Any]]:
    """Status, error code, message and extra fields for one of DOMAIN_ERRORS: 400 bad name, header or
    watch cursor, 403 scope too weak, 404 (also a namespace the token holds no scope in), 410 history trimmed, 409 (400 for an invalid command), 503 with Retry-After and whether a write certainly did not
    apply. Shared by the HTTP error responses and the chat worker's error events."""
    if isinstance(exc, InvalidName):
        return 400, "invalid_name", str(exc), {}
    if isinstance(exc, InvalidHeader):
        return 400, "invalid_header", str(exc), {}
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
        return (400 if exc.error == "invalid_command" else 409), exc.error, exc.message, \
            {"current_version": exc.current_version}
    if isinstance(exc, Unavailable):
        applied = "unknown" if isinstance(exc, Indeterminate) else "no"
        return 503, "unavailable", str(exc), {"applied": applied, "retry_after": exc.retry_after}
    raise TypeError(f"not a request-level error: {exc!r}")


def error_for(exc: Exception) -> FastJSON:
    """The HTTP response for one of DOMAIN_ERRORS."""
    status, error, message, extra = error_parts(exc)
    return error_response(status, error, message, **extra)
