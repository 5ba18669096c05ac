"""MCP client sessions for the tests, through the official SDK's own client (HTTP and stdio)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from mcpdb.ops.localcluster import LocalCluster
from tests.conftest import start_cluster


def mcpdb_command() -> str:
    found = shutil.which("mcpdb", path=str(Path(sys.executable).parent))
    assert found is not None, "the mcpdb console script is not installed in this environment"
    return found


def relay_parameters(url: str, token: str | None = None) -> StdioServerParameters:
    """``mcpdb mcp`` relaying to the node at ``url``, started the way a desktop client starts it."""
    args = ["mcp", "--url", url] + (["--token", token] if token else [])
    return StdioServerParameters(command=mcpdb_command(), args=args)


@contextlib.asynccontextmanager
async def mcp_session(
    url: str,
    token: str | None = None,
    transport: str = "http",
    mode: str = "legacy",
    notifications: asyncio.Queue[Any] | None = None,
) -> AsyncIterator[Client]:
    """An initialized client session; server notifications go to ``notifications``."""

    async def on_message(message: Any) -> None:
        if notifications is not None and getattr(message, "method", None):
            await notifications.put(message)

    if transport == "http":
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        server: Any = streamable_http_client(url + "/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=30))
    else:
        server = relay_parameters(url, token)
    async with Client(server, mode=mode, message_handler=on_message) as client:
        yield client


def gauge(url: str, name: str, token: str) -> float:
    """One unlabelled gauge from the node's /metrics."""
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"{name} not in /metrics"
    return float(values[0])


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """The events of a server-sent-event stream, each as its fields."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
            continue
        name, _, value = line.partition(":")
        event[name] = event.get(name, "") + value.removeprefix(" ")


def bounded_mcp_node(path: Path, token: str, per_token: int, per_node: int, idle_s: int) -> Iterator[LocalCluster]:
    """One node with a bootstrap token and small MCP bounds (sessions per token and per node, idle
    timeout), stopped however the tests using it end."""
    limits = ["--mcp-sessions-per-token", str(per_token), "--mcp-max-sessions", str(per_node)]
    running = start_cluster(path, size=1, token=token, extra_args=[*limits, "--mcp-idle-timeout", str(idle_s)])
    try:
        yield running
    finally:
        running.stop_all(graceful=False)
