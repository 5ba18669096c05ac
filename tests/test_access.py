"""Scoped tokens on a real 3-node cluster with a bootstrap token: the access matrix of every REST route
and MCP tool x token scope, revocation and creation effective on every node at commit, rate limits."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from mcp.shared.exceptions import MCPError

from mcpdb.client import Client
from mcpdb.ops.localcluster import LocalCluster
from tests.conftest import start_cluster
from tests.mcp_helpers import mcp_session

pytestmark = pytest.mark.integration

ROOT_TOKEN = "root-bootstrap-token-for-tests"
TASK = {"kind": "task", "domain": "d", "goal": "g"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = start_cluster(Path(tmp_path_factory.mktemp("access")), token=ROOT_TOKEN)
    try:
        with Client(running.urls(), token=ROOT_TOKEN) as root:
            for ns in ("a", "b"):
                root.put(ns, "x", TASK)
                root.append(ns, "s", "user", "hi")
        yield running
    finally:
        running.stop_all(graceful=False)


@pytest.fixture(scope="module")
def tokens(cluster: LocalCluster) -> dict[str, str]:
    with Client(cluster.urls(), token=ROOT_TOKEN) as root:
        return {
            scope: root.create_token({"a": scope}, f"{scope} on a")["token"] for scope in ("read", "write", "admin")
        }


def _rest_calls(ns: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, method, path, request kwargs) of every namespaced REST route; reads first."""
    base = f"/v1/namespaces/{ns}"
    return [
        ("get", "GET", f"{base}/contexts/x", {}),
        ("list", "GET", f"{base}/contexts", {}),
        ("search", "GET", f"{base}/search", {"params": {"q": "tea"}}),
        ("watch", "GET", f"{base}/watch", {"params": {"since": "1"}}),
        ("put", "PUT", f"{base}/contexts/y", {"json": TASK}),
        ("append", "POST", f"{base}/sessions/s/turns", {"json": {"role": "user", "content": "x"}}),
        ("batch", "POST", f"{base}/batch", {"json": {"ops": [{"op": "put", "id": "z", "context": TASK}]}}),
        ("delete", "DELETE", f"{base}/contexts/y", {}),
        (
            "chat",
            "POST",
            "/v1/chat/completions",
            {
                "json": {
                    "model": "m",
                    "messages": [{"role": "user", "content": "x"}],
                    "namespace": ns,
                    "session_id": "s",
                }
            },
        ),
    ]


def _call(url: str, token: str, method: str, path: str, kwargs: dict[str, Any]) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        with http.stream(method, path, **kwargs) as response:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                return response.status_code, ""  # a watch that started: allowed
            response.read()
            return response.status_code, response.json().get("error", "")


WRITES = {"put", "append", "batch", "delete", "chat"}


def test_rest_access_matrix(cluster: LocalCluster, tokens: dict[str, str]) -> None:
    url = cluster.urls()[2]
    for scope, token in tokens.items():
        for name, method, path, kwargs in _rest_calls("a"):
            status, error = _call(url, token, method, path, kwargs)
            if scope == "read" and name in WRITES:
                assert (status, error) == (403, "forbidden"), (scope, name, status, error)
            else:  # allowed: whatever the route itself answers (chat: no model is served here)
                assert status in (200, 201) or error == "model_not_found", (scope, name, status, error)
        for name, method, path, kwargs in _rest_calls("b") + _rest_calls("nothing-here"):
            status, error = _call(url, token, method, path, kwargs)
            assert (status, error) == (404, "not_found"), (scope, name, path, status, error)
    # Another namespace answers the same whether it exists or not: nothing leaks.
    for token in tokens.values():
        existing = httpx.get(f"{url}/v1/namespaces/b/contexts/x", headers={"Authorization": f"Bearer {token}"})
        absent = httpx.get(f"{url}/v1/namespaces/zz/contexts/x", headers={"Authorization": f"Bearer {token}"})
        assert existing.json()["message"].replace("b", "?") == absent.json()["message"].replace("zz", "?")
        for method, path in (
            ("POST", "/v1/cluster/members"),
            ("POST", "/v1/internal/assign"),
            ("DELETE", "/v1/cluster/members/127.0.0.1:1"),
        ):
            assert (
                httpx.request(method, url + path, json={}, headers={"Authorization": f"Bearer {token}"}).status_code
                == 403
            )
    assert httpx.get(f"{url}/v1/namespaces/a/contexts/x").status_code == 401
    assert (
        httpx.get(
            f"{url}/v1/namespaces/a/contexts/x", headers={"Authorization": "Bearer mcpdb_0123456789abcdef_" + "x" * 43}
        ).status_code
        == 401
    )


def test_token_management_is_limited_to_ones_own_namespaces(cluster: LocalCluster, tokens: dict[str, str]) -> None:
    url = cluster.urls()[1]
    with Client([url], token=tokens["admin"]) as admin, Client([url], token=ROOT_TOKEN) as root:
        made = admin.create_token({"a": "read"}, "made by a's admin")
        on_b = root.create_token({"b": "read"}, "b only")
        listed = {item["id"] for item in admin.tokens()}
        assert made["id"] in listed and on_b["id"] not in listed
        assert all("hash" not in item for item in admin.tokens())
        for forbidden in ({"b": "read"}, {"*": "read"}):
            response = httpx.post(
                f"{url}/v1/tokens", json={"scopes": forbidden}, headers={"Authorization": f"Bearer {tokens['admin']}"}
            )
            assert response.status_code == 403
        gone = httpx.delete(f"{url}/v1/tokens/{on_b['id']}", headers={"Authorization": f"Bearer {tokens['admin']}"})
        assert gone.status_code == 404
    for scope in ("read", "write"):
        response = httpx.post(
            f"{url}/v1/tokens", json={"scopes": {"a": "read"}}, headers={"Authorization": f"Bearer {tokens[scope]}"}
        )
        assert response.status_code == 403


def test_creation_and_revocation_take_effect_on_every_node_at_commit(cluster: LocalCluster) -> None:
    urls = cluster.urls()
    with Client([urls[0]], token=ROOT_TOKEN) as root:
        for _ in range(5):
            made = root.create_token({"a": "write"})
            for url in urls:  # no waiting: the other nodes check after a read barrier
                read = httpx.get(
                    f"{url}/v1/namespaces/a/contexts/x", headers={"Authorization": f"Bearer {made['token']}"}
                )
                assert read.status_code == 200, read.text
            root.revoke_token(made["id"])
            for url in urls:
                refused = httpx.get(
                    f"{url}/v1/namespaces/a/contexts/x", headers={"Authorization": f"Bearer {made['token']}"}
                )
                assert refused.status_code == 401


def _barrier_reads(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ROOT_TOKEN}"}).text
    return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("mcpdb_read_barrier_reads"))


@pytest.mark.parametrize("call", ["get", "list", "search"])
def test_a_scoped_tokens_read_shares_one_read_index_with_its_token_check(
    cluster: LocalCluster, tokens: dict[str, str], call: str
) -> None:
    """The token check of a read in namespace ``a`` waits for ``a``'s entries, and the read is served at
    its read index: one round to the leader per request. It still sees a write acknowledged by
    another node just before it."""
    urls = cluster.urls()
    name, method, path, kwargs = next(rest for rest in _rest_calls("a") if rest[0] == call)
    with Client([urls[0]], token=ROOT_TOKEN) as root:
        for n in range(3):
            root.put("a", "x", {**TASK, "goal": f"tea number {n}"})
            before = _barrier_reads(urls[1])
            read = httpx.request(
                method, urls[1] + path, headers={"Authorization": f"Bearer {tokens['read']}"}, **kwargs
            )
            assert read.status_code == 200, read.text
            assert f"tea number {n}" in read.text, (name, read.text)
            assert _barrier_reads(urls[1]) - before == 1, name


def test_rate_limit_per_token(cluster: LocalCluster) -> None:
    url = cluster.urls()[0]
    with Client([url], token=ROOT_TOKEN) as root:
        limited = root.create_token({"a": "read"}, rate_limit=2)["token"]
    statuses = [
        httpx.get(f"{url}/v1/namespaces/a/contexts/x", headers={"Authorization": f"Bearer {limited}"})
        for _ in range(12)
    ]
    refused = [r for r in statuses if r.status_code == 429]
    assert 4 <= 12 - len(refused) <= 6  # a burst of 2 s at 2/s, and the little the time adds
    assert refused and int(refused[0].headers["Retry-After"]) >= 1


def test_mcp_access_matrix(cluster: LocalCluster, tokens: dict[str, str]) -> None:
    calls = {
        "get_context": ({"id": "x"}, False),
        "search_contexts": ({}, False),
        "put_task": ({"id": "m", "domain": "d", "goal": "g"}, True),
        "append_turn": ({"id": "s", "role": "user", "content": "x"}, True),
        "chat": ({"message": "hi", "session_id": "s"}, True),
    }

    async def run() -> None:
        for scope, token in tokens.items():
            async with mcp_session(cluster.urls()[0], token=token) as client:
                for tool, (arguments, writes) in calls.items():
                    for ns in ("a", "b"):
                        result = await client.call_tool(tool, {"namespace": ns, **arguments})
                        body = orjson.loads(result.content[0].text)
                        if ns == "b":
                            assert result.is_error and body["status"] == 404 and body["error"] == "not_found", (
                                scope,
                                tool,
                                body,
                            )
                        elif scope == "read" and writes:
                            assert result.is_error and body["status"] == 403, (scope, tool, body)
                        else:
                            assert not result.is_error or body["error"] == "model_not_found", (scope, tool, body)
                resources = [r.uri for r in (await client.list_resources()).resources]
                assert resources and all(str(uri).startswith("mcpdb://a/") for uri in resources)
                for uri in ("mcpdb://b/task/x", "mcpdb://b/memory/none"):
                    with pytest.raises(MCPError, match="does not exist"):
                        await client.read_resource(uri)
                with pytest.raises(MCPError):
                    await client.subscribe_resource("mcpdb://b/task/x")
                with pytest.raises(MCPError, match="does not exist"):
                    await client.get_prompt("b/x")
                assert all(p.name.startswith("a/") for p in (await client.list_prompts()).prompts)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resources/subscribe is deprecated in the 2026 protocol; still served
        asyncio.run(run())
    forged = httpx.post(
        cluster.urls()[0] + "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": "Bearer mcpdb_0123456789abcdef_" + "x" * 43},
    )
    assert forged.status_code == 401
