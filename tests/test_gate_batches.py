"""The gate's share of batch requests per namespace: past it a batch is refused before its body is read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcpdb.node.http.access import Authenticator
from mcpdb.node.http.gate import (
    BATCHES_PER_NAMESPACE,
    BATCHES_RUNNING,
    BATCHES_WAITING,
    RequestGate,
    batch_namespace,
)
from mcpdb.node.http.host_guard import HostGuard
from mcpdb.node.http.request_stats import RequestStats
from mcpdb.store.state_machine import ContextStore

BODY = b'{"ops": []}'


@pytest.mark.parametrize(
    ("method", "path", "namespace"),
    [
        ("POST", "/v1/namespaces/hog/batch", "hog"),
        ("PUT", "/v1/namespaces/hog/batch", None),
        ("POST", "/v1/namespaces/hog/contexts/batch", None),
        ("POST", "/v1/namespaces//batch", None),
        ("POST", "/v1/namespaces/hog/search", None),
    ],
)
def test_batch_requests_are_known_by_path(method: str, path: str, namespace: str | None) -> None:
    assert batch_namespace(method, path) == namespace


class _HeldApp:
    """Reads each request's body, then holds it until released: batches waiting on their commit."""

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


def test_one_namespace_gets_its_share_and_the_rest_of_the_node_stays_open(tmp_path: Path) -> None:
    """A tenant sending more batches at once than its share gets 503 (applied: no, Retry-After) for the
    rest, with their bodies unread; another namespace's batches and other requests still pass; the
    node as a whole queues past ``BATCHES_RUNNING`` and refuses past the queue."""

    async def fresh() -> None:
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
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gate), base_url="http://127.0.0.1:7700"
        ) as client:

            def batch(namespace: str) -> asyncio.Task[httpx.Response]:
                post = client.post(f"/v1/namespaces/{namespace}/batch", content=BODY, headers=headers)
                return asyncio.ensure_future(post)

            hog = [batch("hog") for _ in range(BATCHES_PER_NAMESPACE + 3)]
            await asyncio.sleep(0.05)
            refused = [task.result() for task in hog if task.done()]
            assert len(refused) == 3 and app.bodies_read == BATCHES_PER_NAMESPACE
            for response in refused:
                assert response.status_code == 503 and response.headers["retry-after"] == "1"
                assert response.json()["applied"] == "no" and "hog" in response.json()["message"]
            others = [batch(f"tenant{i}") for i in range(BATCHES_RUNNING - BATCHES_PER_NAMESPACE + BATCHES_WAITING)]
            other_write = asyncio.ensure_future(
                client.post("/v1/namespaces/hog/contexts", content=BODY, headers=headers)
            )
            await asyncio.sleep(0.05)
            assert app.bodies_read == BATCHES_RUNNING + 1  # the other write is no batch: it passed
            past_the_queue = await batch("late")
            assert past_the_queue.status_code == 503 and "running" in past_the_queue.json()["message"]
            app.release.set()
            await asyncio.gather(*hog, *others, other_write)
            assert all(task.result().status_code == 200 for task in [*others, other_write])
            assert sum(task.result().status_code == 200 for task in hog) == BATCHES_PER_NAMESPACE
            assert app.bodies_read == BATCHES_RUNNING + 1 + BATCHES_WAITING
        store.close()

    asyncio.run(scenario())
