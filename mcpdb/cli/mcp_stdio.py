"""``mcpdb mcp``: serve MCP over stdio for desktop clients, relayed to a node's ``/mcp`` endpoint.

Every JSON-RPC message from the client's stdin goes to the node over the SDK's
streamable HTTP client transport, and every message back (responses and
notifications, such as resource updates from the node's GET stream) goes to
stdout. Relaying messages rather than re-implementing the server keeps one
MCP implementation, the node's, with its access checks and linearizable reads.

When the node refuses a request (401, 403, 404, ...) or cannot be reached, the
client's request is answered with a JSON-RPC error that says so, and the relay
keeps serving; it exits when the client closes stdin.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import anyio
import httpx2
import typer
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp_types import INTERNAL_ERROR, ErrorData, JSONRPCError, jsonrpc_message_adapter
from pydantic import ValidationError

from mcpdb.cli.errors import CliError

READ_TIMEOUT_S = 300.0  # the node may hold a notification stream open this long between events
BAD_GATEWAY = 502  # the status of the stand-in answer to a POST that never reached the node


def unreachable_reason(error: httpx2.TransportError) -> str:
    """The root cause of a failed connection in a few words ("connection refused"), not httpx's wrapper text."""
    if isinstance(error, httpx2.TimeoutException):
        return "timed out"
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:  # errno's own words: asyncio rewords a refusal
            said = os.strerror(cause.errno) if cause.errno and cause.errno > 0 else cause.strerror
            return said[:1].lower() + said[1:]
        cause = cause.__cause__ or cause.__context__
    return str(error) or type(error).__name__


class NodeErrors(httpx2.AsyncBaseTransport):
    """Answers each MCP POST that the node refused or never got with a JSON-RPC error naming the cause.

    The SDK's transport passes a JSON-RPC error body through whatever the status, but reduces any
    other failed answer to "Server returned an error response", and a POST that raises kills the whole
    transport (a traceback, and the client waits for an answer that never comes). Rewriting the answer
    here keeps the request's id, so the client's pending request gets the error.
    """

    def __init__(self, node_url: str, has_token: bool) -> None:
        self.node_url = node_url
        self.has_token = has_token
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method != "POST":  # the GET stream and the closing DELETE: the SDK retries or ignores them
            return await self.inner.handle_async_request(request)
        try:
            response = await self.inner.handle_async_request(request)
            if response.status_code < 400:
                return response
            body = await response.aread()
        except httpx2.TransportError as error:
            return self._failed(
                request, BAD_GATEWAY, f"cannot reach the node at {self.node_url}: {unreachable_reason(error)}", {}
            )
        try:
            if isinstance(jsonrpc_message_adapter.validate_json(body, by_name=False), JSONRPCError):
                return httpx2.Response(
                    response.status_code, headers={"content-type": "application/json"}, content=body, request=request
                )  # the node's own JSON-RPC error
        except ValidationError:
            pass
        message, code = self._refusal(response.status_code, body)
        return self._failed(request, response.status_code, message, {"status": response.status_code, "error": code})

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _refusal(self, status: int, body: bytes) -> tuple[str, str | None]:
        """A sentence for a refusal that carries no JSON-RPC error, and the node's error code if any."""
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        detail = answer if isinstance(answer, dict) else {}
        code, said = detail.get("error"), detail.get("message") or body.decode("utf-8", "replace")[:200].strip()
        if status == 401:
            if not self.has_token:
                return f"the node at {self.node_url} needs a bearer token: pass --token or set MCPDB_TOKEN", code
            return (
                f"the node at {self.node_url} refused the bearer token (wrong or revoked): check --token or MCPDB_TOKEN"
            ), code
        reason = httpx2.codes.get_reason_phrase(status) or "error"
        sentence = f"the node at {self.node_url} answered {status} {reason}"
        if said and said != reason:
            sentence += f": {said}"
        if status == 404:
            sentence += " (is --url the node's address, without a path?)"
        return sentence, code

    def _failed(self, request: httpx2.Request, status: int, message: str, data: dict[str, Any]) -> httpx2.Response:
        """The answer the SDK relays to the client: a JSON-RPC error for a request, nothing for a notification."""
        try:
            sent = json.loads(request.content)
        except ValueError:
            sent = None
        if not (isinstance(sent, dict) and "method" in sent and "id" in sent):
            print(f"mcpdb mcp: {message} (a notification or response was not delivered)", file=sys.stderr)
            return httpx2.Response(status, request=request)
        error = JSONRPCError(
            jsonrpc="2.0", id=sent["id"], error=ErrorData(code=INTERNAL_ERROR, message=message, data=data or None)
        )
        return httpx2.Response(
            status, request=request, json=error.model_dump(by_alias=True, mode="json", exclude_none=True)
        )


async def relay(url: str, token: str | None) -> None:
    """Relay stdin to the node and the node to stdout until either side closes."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(
        headers=headers, timeout=httpx2.Timeout(30.0, read=READ_TIMEOUT_S), transport=NodeErrors(url, bool(token))
    )
    async with (
        http,
        stdio_server() as (from_client, to_client),
        streamable_http_client(url.rstrip("/") + "/mcp", http_client=http) as (from_node, to_node),
        anyio.create_task_group() as relays,
    ):

        async def pump(source: Any, sink: Any, source_name: str) -> None:
            # Closing the sink is what ends its reader: stdio_server's stdout writer, or the transport's
            # POST loop; left open, the relay outlives its client.
            async with sink:
                async for message in source:
                    if isinstance(message, Exception):  # one unreadable message; the session goes on
                        print(f"mcpdb mcp: unreadable message from the {source_name}: {message}", file=sys.stderr)
                        continue
                    await sink.send(message)
            relays.cancel_scope.cancel()  # either side closed: the session is over

        relays.start_soon(pump, from_client, to_node, "client")
        relays.start_soon(pump, from_node, to_client, "node")


def mcp(
    url: Annotated[
        str | None, typer.Option(help="Node URL (else the first of MCPDB_URL, else http://127.0.0.1:7700).")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (else MCPDB_TOKEN).", show_default=False)] = None,
) -> None:
    """Serve the Model Context Protocol on stdin/stdout, backed by a node (for desktop MCP clients)."""
    target = url or (os.environ.get("MCPDB_URL", "").split(",")[0].strip() or "http://127.0.0.1:7700")
    if not target.startswith(("http://", "https://")):
        raise CliError(f"--url must start with http:// or https://, got {target!r}")
    try:
        host = httpx2.URL(target).host
    except httpx2.InvalidURL as error:
        raise CliError(f"--url {target!r} is not a URL: {error}") from None
    if not host:
        raise CliError(f"--url {target!r} names no host")
    anyio.run(relay, target, token or os.environ.get("MCPDB_TOKEN"))
