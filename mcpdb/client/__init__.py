"""The Python SDK for mcpdb's REST API: sync and async clients with failover and safe retries.

Imports httpx and nothing of the server, so ``pip install mcpdb`` serves an application without
llama.cpp, LMDB or pysyncobj. Errors are one tree under ``McpdbError``, one class per HTTP status
family a caller acts on.
"""

from mcpdb.client._client import (
    DEFAULT_URL,
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    InvalidRequest,
    McpdbError,
    NotFound,
    Unauthorized,
    Unavailable,
    chat_body,
)

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "McpdbError",
    "NotFound",
    "Unauthorized",
    "Unavailable",
    "chat_body",
]
