"""JSON responses shared by the node's routers: orjson rendering and one error shape."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


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
