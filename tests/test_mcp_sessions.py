"""MCP sessions and subscriptions on a real node with a bootstrap token and scoped tokens: a session
belongs to the token that opened it, sessions are bounded per token and per node and expire when idle,
and resources/subscribe is idempotent, bounded and undone by unsubscribe."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from mcpdb.client import Client
from mcpdb.node.mcp.sessions import MAX_SUBSCRIPTIONS
from mcpdb.ops.localcluster import LocalCluster
from tests.mcp_helpers import bounded_mcp_node, gauge, mcp_session

pytestmark = pytest.mark.integration

ROOT_TOKEN = "root-bootstrap-token-for-session-tests"
PER_TOKEN, PER_NODE, IDLE_S = 3, 5, 2
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from bounded_mcp_node(Path(tmp_path_factory.mktemp("sessions")), ROOT_TOKEN, PER_TOKEN, PER_NODE, IDLE_S)


@pytest.fixture(scope="module")
def tokens(node: LocalCluster) -> dict[str, str]:
    with Client(node.urls(), token=ROOT_TOKEN) as root:
        return {ns: root.create_token({ns: "read"}, f"read on {ns}")["token"] for ns in ("acme", "beta", "gamma")}


def _open(url: str, token: str) -> httpx.Response:
    return httpx.post(url + "/mcp", json=INITIALIZE, headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT})


def _close(url: str, token: str, session_id: str) -> int:
    return httpx.delete(
        url + "/mcp", headers={"Authorization": f"Bearer {token}", "Mcp-Session-Id": session_id}
    ).status_code


def test_a_session_belongs_to_the_token_that_opened_it(node: LocalCluster, tokens: dict[str, str]) -> None:
    url = node.urls()[0]
    opened = _open(url, tokens["acme"])
    assert opened.status_code == 200, opened.text
    session_id = opened.headers["mcp-session-id"]
    intruder = {"Authorization": f"Bearer {tokens['beta']}", "Mcp-Session-Id": session_id, "Accept": ACCEPT}
    with httpx.stream("GET", url + "/mcp", headers=intruder, timeout=5) as stream:
        assert stream.status_code == 404  # the notification stream of acme's session stays closed to beta
    listed = httpx.post(
        url + "/mcp",
        headers={**intruder, "Mcp-Protocol-Version": "2025-06-18"},
        json={"jsonrpc": "2.0", "id": 2, "method": "resources/list"},
    )
    assert listed.status_code == 404
    assert _close(url, tokens["beta"], session_id) == 404
    assert _close(url, ROOT_TOKEN, session_id) == 404  # even root did not open it
    assert _close(url, tokens["acme"], session_id) == 200


def test_sessions_are_bounded_per_token_and_per_node_and_expire_when_idle(
    node: LocalCluster, tokens: dict[str, str]
) -> None:
    url = node.urls()[0]
    time.sleep(IDLE_S + 1)  # sessions of other tests have expired
    mine = [_open(url, tokens["acme"]) for _ in range(PER_TOKEN)]
    assert [r.status_code for r in mine] == [200] * PER_TOKEN
    refused = _open(url, tokens["acme"])
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert "--mcp-sessions-per-token" in refused.json()["error"]["message"]
    others = [_open(url, tokens["beta"]) for _ in range(PER_NODE - PER_TOKEN)]
    assert [r.status_code for r in others] == [200] * (PER_NODE - PER_TOKEN)  # acme's share left room
    full = _open(url, tokens["gamma"])
    assert full.status_code == 429 and "--mcp-max-sessions" in full.json()["error"]["message"]
    assert gauge(url, "mcpdb_mcp_sessions", ROOT_TOKEN) == PER_NODE
    time.sleep(IDLE_S + 2)  # nothing in flight and no stream open: every session expires
    assert gauge(url, "mcpdb_mcp_sessions", ROOT_TOKEN) == 0
    again = _open(url, tokens["acme"])
    assert again.status_code == 200
    assert _close(url, tokens["acme"], again.headers["mcp-session-id"]) == 200


def test_subscribe_is_idempotent_bounded_and_undone_by_unsubscribe(node: LocalCluster) -> None:
    url = node.urls()[0]
    with Client(node.urls(), token=ROOT_TOKEN) as root:
        for context_id in ("watched", "dropped"):
            root.put("acme", context_id, {"kind": "task", "domain": "d", "goal": "g"})

    async def run() -> None:
        updates: asyncio.Queue = asyncio.Queue()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resources/subscribe is deprecated in the 2026 protocol; still served
            async with mcp_session(url, token=ROOT_TOKEN, notifications=updates) as client:
                watched, dropped = "mcpdb://acme/task/watched", "mcpdb://acme/task/dropped"
                for _ in range(300):  # the probe's flood, on one URI
                    await client.subscribe_resource(watched)
                assert gauge(url, "mcpdb_mcp_subscriptions", ROOT_TOKEN) == 1
                assert gauge(url, "mcpdb_mcp_change_listeners", ROOT_TOKEN) == 1
                await client.subscribe_resource(dropped)
                await client.unsubscribe_resource(dropped)
                assert gauge(url, "mcpdb_mcp_subscriptions", ROOT_TOKEN) == 1
                with Client(node.urls(), token=ROOT_TOKEN) as root:
                    root.put("acme", "dropped", {"kind": "task", "domain": "d", "goal": "changed"})
                    root.put("acme", "watched", {"kind": "task", "domain": "d", "goal": "changed"})
                note = await asyncio.wait_for(updates.get(), 10)
                assert str(note.params.uri) == watched  # nothing for the URI unsubscribed, written first
                for i in range(MAX_SUBSCRIPTIONS - 1):  # room for exactly this many more: the flood counted once
                    await client.subscribe_resource(f"mcpdb://acme/task/t{i}")
                with pytest.raises(MCPError, match="unsubscribe from one first"):
                    await client.subscribe_resource("mcpdb://acme/task/one-too-many")
                await client.subscribe_resource(watched)  # already watched: still fine at the bound
                assert gauge(url, "mcpdb_mcp_subscriptions", ROOT_TOKEN) == MAX_SUBSCRIPTIONS
        await asyncio.sleep(0.5)
        assert gauge(url, "mcpdb_mcp_subscriptions", ROOT_TOKEN) == 0  # the session ended: its subscriptions with it
        assert gauge(url, "mcpdb_mcp_change_listeners", ROOT_TOKEN) == 0

    asyncio.run(run())
