"""``mcpdb mcp``: serve MCP over stdio for desktop clients, relayed to a node's ``/mcp`` endpoint.

Every JSON-RPC message from the client's stdin goes to the node over the SDK's
streamable HTTP client transport, and every message back (responses and
notifications, such as resource updates from the node's GET stream) goes to
stdout. Relaying messages rather than re-implementing the server keeps one
MCP implementation, the node's, with its access checks and linearizable reads.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, Optional

import anyio
import httpx2
import typer
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server

from cli.errors import CliError

READ_TIMEOUT_S = 300.0  # the node may hold a notification stream open this long between events


async def relay(url: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=READ_TIMEOUT_S))
    async with http, stdio_server() as (from_client, to_client), \
            streamable_http_client(url.rstrip("/") + "/mcp", http_client=http) as (from_node, to_node), \
            anyio.create_task_group() as relays:

        async def pump(source: Any, sink: Any, source_name: str) -> None:
            async for message in source:
                if isinstance(message, Exception):  # one unreadable message; the session goes on
                    print(f"mcpdb mcp: unreadable message from the {source_name}: {message}", file=sys.stderr)
                    continue
                await sink.send(message)
            relays.cancel_scope.cancel()  # either side closed: the session is over

        relays.start_soon(pump, from_client, to_node, "client")
        relays.start_soon(pump, from_node, to_client, "node")


def mcp(url: Annotated[Optional[str], typer.Option(
            help="Node URL (else the first of MCPDB_URL, else http://127.0.0.1:7700).")] = None,
        token: Annotated[Optional[str], typer.Option(help="Bearer token (else MCPDB_TOKEN).",
                                                     show_default=False)] = None) -> None:
    """Serve the Model Context Protocol on stdin/stdout, backed by a node (for desktop MCP clients)."""
    target = url or (os.environ.get("MCPDB_URL", "").split(",")[0].strip() or "http://127.0.0.1:7700")
    if not target.startswith(("http://", "https://")):
        raise CliError(f"--url must start with http:// or https://, got {target!r}")
    anyio.run(relay, target, token or os.environ.get("MCPDB_TOKEN"))
