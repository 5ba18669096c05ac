"""The Host, Origin and Content-Type rules (mcpdb.node.http.host_guard): the rules themselves, then a real node
refusing what a web page on another site (or one that rebound its DNS name) could send, on every surface."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mcpdb.ops.localcluster import LocalCluster
from mcpdb.node.http.host_guard import HostGuard
from tests.conftest import start_cluster

TASK = {"kind": "task", "domain": "d", "goal": "g"}


def _refusal(guard: HostGuard, method: str, **headers: str) -> int | None:
    encoded = {name.replace("_", "-").encode(): value.encode() for name, value in headers.items()}
    refused = guard.refusal(method.encode(), encoded)
    return None if refused is None else refused.status


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:7700", True), ("localhost:7700", True), ("LOCALHOST", True), ("[::1]:7700", True),
    ("127.0.0.2:7700", True),  # all of 127/8 is this machine
    ("node1.internal:7700", True),  # the host of --advertise-url
    ("proxy.example.com", True),  # --allowed-host
    ("evil.example.com:7700", False), ("localhost.evil.example.com", False), ("10.1.2.3:7700", False),
    ("", False),
])
def test_host_allow_list_on_a_loopback_bind(host: str, allowed: bool) -> None:
    guard = HostGuard("127.0.0.1:7700", "http://node1.internal:7700", ["proxy.example.com"])
    assert (_refusal(guard, "GET", host=host) is None) == allowed


def test_a_wildcard_bind_accepts_any_ip_literal_but_no_foreign_name() -> None:
    guard = HostGuard("0.0.0.0:7700", None, [])
    assert _refusal(guard, "GET", host="10.1.2.3:7700") is None  # a pod IP, e.g. a kubelet probe
    assert _refusal(guard, "GET", host="[fd00::5]:7700") is None
    assert _refusal(guard, "GET", host="evil.example.com:7700") == 421


@pytest.mark.parametrize("origin, allowed", [
    ("http://127.0.0.1:7700", True),  # same origin: the dashboard
    ("https://proxy.example.com", True),  # the allowed proxy's pages
    ("http://127.0.0.1:8080", False),  # another local web app
    ("http://localhost:7700", False),  # another origin, even if it names this machine
    ("http://evil.example.com", False), ("null", False), ("file://", False),
])
def test_origin_must_be_same_origin_or_an_allowed_host(origin: str, allowed: bool) -> None:
    guard = HostGuard("127.0.0.1:7700", None, ["proxy.example.com"])
    status = _refusal(guard, "DELETE", host="127.0.0.1:7700", origin=origin)
    assert status == (None if allowed else 403)


@pytest.mark.parametrize("content_type, length, status", [
    ("application/json", "10", None), ("application/json; charset=utf-8", "10", None),
    ("application/merge-patch+json", "10", None),
    ("text/plain", "10", 415), ("application/x-www-form-urlencoded", "10", 415),
    ("multipart/form-data; boundary=x", "10", 415), (None, "10", 415),  # a fetch() of an untyped Blob
    (None, "0", None),  # no body: nothing to declare
])
def test_a_body_must_be_declared_json(content_type: str | None, length: str, status: int | None) -> None:
    guard = HostGuard("127.0.0.1:7700", None, [])
    headers = {"host": "127.0.0.1:7700", "content_length": length}
    if content_type is not None:
        headers["content_type"] = content_type
    assert _refusal(guard, "POST", **headers) == status


# ---------------------------------------------------------------------------------------- a real node
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One node on loopback without a token (everyone is root: the case a web page must never reach)."""
    running = start_cluster(Path(tmp_path_factory.mktemp("guard")), size=1,
                            extra_args=["--allowed-host", "proxy.example.com"])
    try:
        yield running
    finally:
        running.stop_all(graceful=False)


def _victim(url: str) -> None:
    response = httpx.put(f"{url}/v1/namespaces/acme/contexts/victim", json=TASK)
    assert response.status_code in (200, 201), response.text


def _exists(url: str) -> bool:
    return httpx.get(f"{url}/v1/namespaces/acme/contexts/victim").status_code == 200


@pytest.mark.integration
def test_the_probes_cross_site_delete_is_refused(node: LocalCluster) -> None:
    url = node.urls()[0]
    _victim(url)
    batch = '{"ops":[{"op":"delete","id":"victim"}]}'
    cross_site = httpx.post(f"{url}/v1/namespaces/acme/batch", content=batch,
                            headers={"Content-Type": "text/plain", "Origin": "http://evil.example.com"})
    assert cross_site.status_code == 403, cross_site.text
    assert cross_site.json()["error"] == "cross_origin_refused"
    no_origin = httpx.post(f"{url}/v1/namespaces/acme/batch", content=batch, headers={"Content-Type": "text/plain"})
    assert no_origin.status_code == 415, no_origin.text
    untyped = httpx.post(f"{url}/v1/namespaces/acme/batch", content=batch)
    assert untyped.status_code == 415, untyped.text
    assert _exists(url)
    same_origin = httpx.post(f"{url}/v1/namespaces/acme/batch", content=batch,
                             headers={"Content-Type": "application/json", "Origin": url})
    assert same_origin.status_code == 200, same_origin.text
    assert not _exists(url)


@pytest.mark.integration
@pytest.mark.parametrize("method, path", [
    ("PUT", "/v1/namespaces/acme/contexts/victim"), ("GET", "/v1/namespaces/acme/contexts/victim"),
    ("DELETE", "/v1/namespaces/acme/contexts/victim"), ("GET", "/metrics"), ("GET", "/ui"), ("GET", "/healthz"),
    ("POST", "/mcp"), ("GET", "/v1/overview"),
])
def test_a_rebound_host_is_refused_on_every_surface(node: LocalCluster, method: str, path: str) -> None:
    url = node.urls()[0]
    _victim(url)
    response = httpx.request(method, url + path, json=TASK if method in ("PUT", "POST") else None,
                             headers={"Host": "evil.example.com:7700"})
    assert response.status_code == 421, response.text
    assert response.json()["error"] == "misdirected_request"
    assert _exists(url)


@pytest.mark.integration
def test_a_foreign_origin_is_refused_on_mcp_and_an_allowed_proxy_is_served(node: LocalCluster) -> None:
    url = node.urls()[0]
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "probe", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    foreign = httpx.post(url + "/mcp", json=initialize, headers={**accept, "Origin": "http://evil.example.com"})
    assert foreign.status_code == 403, foreign.text
    proxied = httpx.post(url + "/mcp", json=initialize, headers={
        **accept, "Host": "proxy.example.com", "Origin": "https://proxy.example.com"})
    assert proxied.status_code == 200, proxied.text
    rest = httpx.get(f"{url}/v1/namespaces/acme/contexts", headers={"Host": "proxy.example.com"})
    assert rest.status_code == 200, rest.text
