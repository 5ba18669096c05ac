"""The gate's share of bulk writes per namespace: past it one is refused before its body is read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcpdb.auth import ROOT, Principal
from mcpdb.node.http.access import Authenticator
from mcpdb.node.http.gate import BULK_WRITES_PER_NAMESPACE, RequestGate, bulk_namespace, bulk_share
from mcpdb.node.http.host_guard import HostGuard
from mcpdb.node.http.request_stats import RequestStats
from mcpdb.raft.command_lanes import BULK_BYTES
from mcpdb.store.state_machine import ContextStore

SMALL_BODY = b'{"ops": []}'
BULK_BODY = b'{"context": "' + b"x" * BULK_BYTES + b'"}'


@pytest.mark.parametrize(
    ("method", "path", "length", "namespace"),
    [
        ("POST", "/v1/namespaces/hog/batch", b"10", "hog"),
        ("PUT", "/v1/namespaces/hog/contexts/a", str(BULK_BYTES).encode(), "hog"),
        ("PUT", "/v1/namespaces/hog/contexts/a", str(BULK_BYTES - 1).encode(), None),
        ("PUT", "/v1/namespaces/hog/contexts/a", None, "hog"),  # chunked: it may be any size
        ("DELETE", "/v1/namespaces/hog/contexts/a", None, None),
        ("POST", "/v1/namespaces/hog/search", b"100", None),
        ("POST", "/v1/namespaces//batch", b"10", None),
        ("POST", "/v1/namespaces/hog", None, None),
        ("POST", "/v1/chat/completions", str(BULK_BYTES).encode(), None),
    ],
)
def test_bulk_writes_are_known_by_path_and_length(
    method: str, path: str, length: bytes | None, namespace: str | None
) -> None:
    assert bulk_namespace(method, path, length) == namespace


@pytest.mark.parametrize(
    ("method", "path", "length", "principal", "share"),
    [
        ("POST", "/mcp", str(BULK_BYTES).encode(), Principal("t1"), "mcp t1"),
        ("POST", "/mcp", None, Principal("t1"), "mcp t1"),  # chunked
        ("POST", "/mcp", str(BULK_BYTES - 1).encode(), Principal("t1"), None),
        ("POST", "/mcp", str(BULK_BYTES).encode(), ROOT, "mcp root"),
        ("GET", "/mcp", None, Principal("t1"), None),
        ("POST", "/v1/namespaces/hog/batch", b"10", Principal("t1"), "hog"),
    ],
)
def test_large_mcp_requests_count_in_their_tokens_share(
    method: str, path: str, length: bytes | None, principal: Principal, share: str | None
) -> None:
    """A tool call's namespace is inside its body, so a large MCP request counts in its token's share."""
    assert bulk_share(method, path, length, principal) == share


class _HeldApp:
    """Reads each request's body, then holds it until released: bulk writes waiting on their commit."""

    def __init__(self) -> None:
        self.bodies_read = 0
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        self.bodies_read += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


def test_one_namespace_gets_its_share_and_the_others_stay_open(tmp_path: Path) -> None:
    """A tenant sending more bulk writes at once than its share gets 503 (applied: no, Retry-After) for
    the rest, their bodies unread; its small writes and every other namespace's bulk writes pass; once
    its writes are answered its share is free again."""

    async def fresh(namespace: str) -> None:
        return None

    async def scenario() -> None:
        app = _HeldApp()
        store = ContextStore(str(tmp_path))
        gate = RequestGate(
            app,
            HostGuard("127.0.0.1:7700", None, (), ()),
            Authenticator(None, store, fresh),
            1 << 20,
            10.0,
            RequestStats(),
        )
        headers = {"host": "127.0.0.1:7700", "content-type": "application/json"}
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:7700") as client:

            def write(path: str, body: bytes = SMALL_BODY) -> asyncio.Task[httpx.Response]:
                return asyncio.ensure_future(client.post(path, content=body, headers=headers))

            hog = [write("/v1/namespaces/hog/batch") for _ in range(BULK_WRITES_PER_NAMESPACE - 1)]
            hog.append(write("/v1/namespaces/hog/contexts", BULK_BODY))  # a large single write counts too
            past_share = [write("/v1/namespaces/hog/batch") for _ in range(3)]
            await asyncio.wait(past_share)
            assert app.bodies_read == BULK_WRITES_PER_NAMESPACE
            for task in past_share:
                response = task.result()
                assert response.status_code == 503 and response.headers["retry-after"] == "1"
                assert response.json()["applied"] == "no" and "hog" in response.json()["message"]
            others = [write(f"/v1/namespaces/tenant{i}/batch") for i in range(3 * BULK_WRITES_PER_NAMESPACE)]
            small = write("/v1/namespaces/hog/contexts")
            for _ in range(500):  # every one of them reaches the app
                if app.bodies_read == BULK_WRITES_PER_NAMESPACE + 3 * BULK_WRITES_PER_NAMESPACE + 1:
                    break
                await asyncio.sleep(0.01)
            assert app.bodies_read == BULK_WRITES_PER_NAMESPACE + 3 * BULK_WRITES_PER_NAMESPACE + 1
            app.release.set()
            await asyncio.gather(*hog, *others, small)
            assert all(task.result().status_code == 200 for task in [*hog, *others, small])
            assert not gate.bulk_writes  # every share given back
            again = await client.post("/v1/namespaces/hog/batch", content=SMALL_BODY, headers=headers)
            assert again.status_code == 200

            async def too_large() -> Any:  # chunked, no Content-Length: refused 413 while it streams
                for _ in range(3):
                    yield b"x" * (1 << 19)

            refused = await client.post("/v1/namespaces/hog/batch", content=too_large(), headers=headers)
            assert refused.status_code == 413 and not gate.bulk_writes

            # Large MCP requests (tool calls writing big contexts) of one token: its share, then 503.
            app.release.clear()
            calls = [write("/mcp", BULK_BODY) for _ in range(BULK_WRITES_PER_NAMESPACE + 2)]
            await asyncio.wait(calls, timeout=0.5)
            refused_calls = [task.result() for task in calls if task.done()]
            assert len(refused_calls) == 2 and all(r.status_code == 503 for r in refused_calls)
            assert "MCP" in refused_calls[0].json()["message"]
            app.release.set()
            await asyncio.gather(*calls)
            assert not gate.bulk_writes
        store.close()

    asyncio.run(scenario())
