"""The Host, Origin and Content-Type rules (mcpdb.node.http.host_guard): the rules themselves, then a real node
refusing what a web page on another site (or one that rebound its DNS name) could send, on every surface."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from mcpdb.node.config import ConfigError, NodeConfig
from mcpdb.node.http.access import Authenticator
from mcpdb.node.http.gate import RequestGate
from mcpdb.node.http.host_guard import HostGuard
from mcpdb.node.http.request_stats import RequestStats
from mcpdb.ops.localcluster import LocalCluster
from mcpdb.store.state_machine import ContextStore
from tests.conftest import start_cluster

TASK = {"kind": "task", "domain": "d", "goal": "g"}


def _refusal(guard: HostGuard, method: str, *repeated: tuple[str, str], **headers: str) -> int | None:
    encoded = [(name.replace("_", "-").encode(), value.encode()) for name, value in [*headers.items(), *repeated]]
    refused = guard.refusal(method, encoded)
    return None if refused is None else refused.status


def _guard(
    http_addr: str = "127.0.0.1:7700",
    advertise_url: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    allowed_origins: tuple[str, ...] = (),
) -> HostGuard:
    return HostGuard(http_addr, advertise_url, allowed_hosts, allowed_origins)


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:7700", True),
        ("localhost:7700", True),
        ("LOCALHOST", True),
        ("[::1]:7700", True),
        ("[::1]", True),
        ("127.0.0.2:7700", True),  # all of 127/8 is this machine
        ("node1.internal:7700", True),
        ("node1.internal:9999", True),  # the host of --advertise-url
        ("proxy.example.com", True),  # --allowed-host
        ("evil.example.com:7700", False),
        ("localhost.evil.example.com", False),
        ("10.1.2.3:7700", False),
        ("", False),
        # Only a strict host[:port]: nothing after "]", no bare IPv6, no userinfo, path, empty or wild port.
        ("[::1]evil.example", False),
        ("[::1]:7700evil", False),
        ("[::1", False),
        ("::1", False),
        ("[127.0.0.1]:7700", False),
        ("[fe80::1%25lo]:7700", False),
        ("127.0.0.1:", False),
        ("127.0.0.1:99999", False),
        ("127.0.0.1:0", False),
        ("127.0.0.1:7700:80", False),
        ("evil.example@127.0.0.1", False),
        ("127.0.0.1/evil", False),
        ("127.0.0.1 evil", False),
        ("localhost..", False),
    ],
)
def test_host_allow_list_on_a_loopback_bind(host: str, allowed: bool) -> None:
    guard = _guard(advertise_url="http://node1.internal:7700", allowed_hosts=("proxy.example.com",))
    assert _refusal(guard, "GET", host=host) == (None if allowed else 421)


def test_a_wildcard_bind_accepts_any_ip_literal_but_no_foreign_name() -> None:
    guard = _guard("0.0.0.0:7700")
    assert _refusal(guard, "GET", host="10.1.2.3:7700") is None  # a pod IP, e.g. a kubelet probe
    assert _refusal(guard, "GET", host="[fd00::5]:7700") is None
    assert _refusal(guard, "GET", host="evil.example.com:7700") == 421


@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("http://127.0.0.1:7700", True),  # same origin: the dashboard
        ("https://127.0.0.1:7700", True),  # same host and port: the same listener, whatever the scheme
        ("http://node1.internal:7700", True),
        ("http://node1.internal:7700/", False),  # --advertise-url, exactly
        ("https://app.example.com", True),
        ("https://app.example.com:443", True),  # --allowed-origin
        ("http://node1.internal:8080", False),  # another port of the advertised host
        ("https://node1.internal:7700", False),  # another scheme
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("https://proxy.example.com", False),  # --allowed-host names a Host, not an origin
        ("http://127.0.0.1:8080", False),  # another local web app
        ("http://localhost:7700", False),  # another origin, even if it names this machine
        ("http://evil.example.com", False),
        ("null", False),
        ("file://", False),
        ("http://[::1]x:7700", False),
    ],
)
def test_origin_must_be_same_origin_the_advertised_or_an_allowed_one(origin: str, allowed: bool) -> None:
    guard = _guard(
        advertise_url="http://node1.internal:7700",
        allowed_hosts=("proxy.example.com",),
        allowed_origins=("https://app.example.com",),
    )
    status = _refusal(guard, "DELETE", host="127.0.0.1:7700", origin=origin)
    assert status == (None if allowed else 403)


def test_pages_on_other_ports_of_an_advertised_ip_are_refused() -> None:
    """The Kubernetes workers' case: --advertise-url http://$POD_IP:7700 on a wildcard bind."""
    guard = _guard("0.0.0.0:7700", "http://10.1.2.3:7700", ("mcpdb",))
    assert (
        _refusal(guard, "POST", host="10.1.2.3:7700", origin="http://10.1.2.3:7700", content_type="application/json")
        is None
    )
    assert (
        _refusal(guard, "POST", host="10.1.2.3:7700", origin="http://10.1.2.3:8080", content_type="application/json")
        == 403
    )
    assert (
        _refusal(guard, "POST", host="mcpdb:7700", origin="http://mcpdb:8080", content_type="application/json") == 403
    )


def test_a_proxy_forwarding_its_host_is_same_origin() -> None:
    """A proxy at https://mcpdb.example.com forwarding Host: its pages' Origin is the request's own origin."""
    guard = _guard(allowed_hosts=("mcpdb.example.com",))
    assert _refusal(guard, "DELETE", host="mcpdb.example.com", origin="https://mcpdb.example.com") is None
    assert _refusal(guard, "DELETE", host="mcpdb.example.com", origin="https://other.example.com") == 403
    rewriting = _guard(allowed_origins=("https://mcpdb.example.com",))  # a proxy sending Host: 127.0.0.1:7700
    assert _refusal(rewriting, "DELETE", host="127.0.0.1:7700", origin="https://mcpdb.example.com") is None
    assert _refusal(rewriting, "DELETE", host="mcpdb.example.com", origin="https://mcpdb.example.com") == 421


@pytest.mark.parametrize("name", ["host", "origin", "content_type", "content_length", "authorization"])
def test_a_guarded_header_given_twice_is_refused(name: str) -> None:
    """Starlette and the MCP SDK read a header's first value; the gate must never judge another one."""
    guard = _guard()
    first = {
        "host": "evil.example",
        "origin": "http://evil.example",
        "content_type": "text/plain",
        "content_length": "5",
        "authorization": "Bearer a",
    }[name]
    headers = {"host": "127.0.0.1:7700", "content_type": "application/json", "content_length": "2"}
    headers[name] = first
    again = {
        "host": "127.0.0.1:7700",
        "origin": "http://127.0.0.1:7700",
        "content_type": "application/json",
        "content_length": "2",
        "authorization": "Bearer b",
    }[name]
    assert _refusal(guard, "POST", (name, again), **headers) == 400


def test_other_repeated_headers_pass() -> None:
    assert _refusal(_guard(), "GET", ("accept", "text/html"), host="127.0.0.1:7700", accept="*/*") is None


@pytest.mark.parametrize(
    "content_type, length, status",
    [
        ("application/json", "10", None),
        ("application/json; charset=utf-8", "10", None),
        ("application/merge-patch+json", "10", None),
        ("text/plain", "10", 415),
        ("application/x-www-form-urlencoded", "10", 415),
        ("multipart/form-data; boundary=x", "10", 415),
        (None, "10", 415),  # a fetch() of an untyped Blob
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_body_must_be_declared_json(method: str, content_type: str | None, length: str, status: int | None) -> None:
    headers = {"host": "127.0.0.1:7700", "content_length": length}
    if content_type is not None:
        headers["content_type"] = content_type
    assert _refusal(_guard(), method, **headers) == status


def test_a_chunked_body_must_be_declared_json() -> None:
    assert _refusal(_guard(), "POST", host="127.0.0.1:7700", transfer_encoding="chunked") == 415


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 415),  # a field-less form post, or fetch(url, {method: "POST", mode: "no-cors"})
        ({"content_length": "0"}, 415),
        ({"content_type": "text/plain"}, 415),
        ({"content_type": "application/x-www-form-urlencoded", "content_length": "0"}, 415),
        ({"authorization": "Basic dTpw"}, 415),  # a browser may attach cached Basic credentials by itself
        ({"content_type": "application/json"}, None),  # what mcpdb's own clients send (curl --json '')
        ({"authorization": "Bearer secret"}, None),
        ({"authorization": "bearer secret"}, None),
    ],
)
def test_a_post_without_a_body_must_not_be_one_a_form_could_send(headers: dict[str, str], status: int | None) -> None:
    assert _refusal(_guard(), "POST", host="127.0.0.1:7700", **headers) == status


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE"])
def test_other_methods_without_a_body_need_no_proof(method: str) -> None:
    """A browser preflights a cross-site PUT, PATCH or DELETE, and a form cannot send one."""
    assert _refusal(_guard(), method, host="127.0.0.1:7700") is None


def test_the_gate_refuses_websockets_and_lets_lifespan_through(tmp_path: Path) -> None:
    """A WebSocket scope would skip every rule of the gate: it is closed before the app sees it."""
    seen: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def fresh(namespace: str) -> None:
        return None

    gate = RequestGate(
        app, _guard(), Authenticator(None, ContextStore(str(tmp_path)), fresh), 1 << 20, 10.0, RequestStats()
    )
    websocket = {"type": "websocket", "path": "/mcp", "headers": [(b"host", b"evil.example")]}
    asyncio.run(gate(websocket, receive, send))
    assert seen == [] and sent == [{"type": "websocket.close", "code": 1008}]
    asyncio.run(gate({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan"]


def test_origins_and_the_advertise_url_are_validated() -> None:
    def config(**flags: Any) -> NodeConfig:
        return NodeConfig(
            node_id="n1",
            data_dir="/tmp/x",
            http_addr="127.0.0.1:7700",
            raft_addr="127.0.0.1:7800",
            inference=False,
            **flags,
        )

    config(
        allowed_origins=["https://mcpdb.example.com", "http://10.0.0.5:8080"],
        advertise_url="http://node1.internal:7700/",
    ).validate()
    refused: list[tuple[dict[str, Any], str]] = [
        ({"allowed_origins": ["mcpdb.example.com"]}, "--allowed-origin"),
        ({"allowed_origins": ["https://mcpdb.example.com/ui"]}, "--allowed-origin"),
        ({"advertise_url": "node1:7700"}, "--advertise-url"),
        ({"advertise_url": "http://node1:7700/base"}, "--advertise-url"),
    ]
    for flags, flag in refused:
        with pytest.raises(ConfigError, match=flag):
            config(**flags).validate()


# ---------------------------------------------------------------------------------------- a real node
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One node on loopback without a token (everyone is root: the case a web page must never reach)."""
    running = start_cluster(
        Path(tmp_path_factory.mktemp("guard")), size=1, extra_args=["--allowed-host", "proxy.example.com"]
    )
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
    cross_site = httpx.post(
        f"{url}/v1/namespaces/acme/batch",
        content=batch,
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example.com"},
    )
    assert cross_site.status_code == 403, cross_site.text
    assert cross_site.json()["error"] == "cross_origin_refused"
    no_origin = httpx.post(f"{url}/v1/namespaces/acme/batch", content=batch, headers={"Content-Type": "text/plain"})
    assert no_origin.status_code == 415, no_origin.text
    untyped = httpx.post(f"{url}/v1/namespaces/acme/batch", content=batch)
    assert untyped.status_code == 415, untyped.text
    assert _exists(url)
    same_origin = httpx.post(
        f"{url}/v1/namespaces/acme/batch", content=batch, headers={"Content-Type": "application/json", "Origin": url}
    )
    assert same_origin.status_code == 200, same_origin.text
    assert not _exists(url)


@pytest.mark.integration
@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", "/v1/namespaces/acme/contexts/victim"),
        ("GET", "/v1/namespaces/acme/contexts/victim"),
        ("DELETE", "/v1/namespaces/acme/contexts/victim"),
        ("GET", "/metrics"),
        ("GET", "/ui"),
        ("GET", "/healthz"),
        ("POST", "/mcp"),
        ("GET", "/v1/overview"),
    ],
)
def test_a_rebound_host_is_refused_on_every_surface(node: LocalCluster, method: str, path: str) -> None:
    url = node.urls()[0]
    _victim(url)
    response = httpx.request(
        method, url + path, json=TASK if method in ("PUT", "POST") else None, headers={"Host": "evil.example.com:7700"}
    )
    assert response.status_code == 421, response.text
    assert response.json()["error"] == "misdirected_request"
    assert _exists(url)


@pytest.mark.integration
def test_a_foreign_origin_is_refused_on_mcp_and_an_allowed_proxy_is_served(node: LocalCluster) -> None:
    url = node.urls()[0]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "0"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    foreign = httpx.post(url + "/mcp", json=initialize, headers={**accept, "Origin": "http://evil.example.com"})
    assert foreign.status_code == 403, foreign.text
    proxied = httpx.post(
        url + "/mcp",
        json=initialize,
        headers={**accept, "Host": "proxy.example.com", "Origin": "https://proxy.example.com"},
    )
    assert proxied.status_code == 200, proxied.text
    rest = httpx.get(f"{url}/v1/namespaces/acme/contexts", headers={"Host": "proxy.example.com"})
    assert rest.status_code == 200, rest.text


def _raw(url: str, request: str) -> tuple[int, bytes]:
    """Send ``request`` (its lines CRLF-joined, ``Connection: close`` unless it has a Connection header) as
    bytes, as no HTTP library would (two Host headers, an absolute-form target); the answer's status and body."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    lines = request.strip().splitlines()
    body = ""
    if "" in lines:
        body = "\r\n".join(lines[lines.index("") + 1 :])
        lines = lines[: lines.index("")]
    if not any(line.lower().startswith("connection:") for line in lines):
        lines.append("Connection: close")
    head = "\r\n".join(lines) + "\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall((head + body).encode("latin-1"))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.integration
def test_a_repeated_host_origin_or_content_type_is_refused_by_a_node(node: LocalCluster) -> None:
    url = node.urls()[0]
    here = urlsplit(url).netloc
    _victim(url)
    status, body = _raw(url, f"GET /healthz HTTP/1.1\nHost: evil.example\nHost: {here}")
    assert status == 400 and b"repeated_header" in body, body
    goal = '{"kind": "task", "domain": "d", "goal": "pwned"}'
    for repeated in (
        f"Origin: http://evil.example\nOrigin: {url}\nContent-Type: application/json",
        "Content-Type: text/plain\nContent-Type: application/json",
    ):
        status, body = _raw(
            url,
            f"PUT /v1/namespaces/acme/contexts/victim HTTP/1.1\nHost: {here}\n{repeated}\n"
            f"Content-Length: {len(goal)}\n\n{goal}",
        )
        assert status == 400 and b"repeated_header" in body, body
    assert httpx.get(f"{url}/v1/namespaces/acme/contexts/victim").json()["goal"] == "g"


@pytest.mark.integration
def test_an_absolute_form_target_names_the_host(node: LocalCluster) -> None:
    """RFC 9112 3.2.2: the target's authority replaces Host, so it must name this node."""
    url = node.urls()[0]
    here = urlsplit(url).netloc
    _victim(url)
    status, body = _raw(url, f"GET http://evil.example/healthz HTTP/1.1\nHost: {here}")
    assert status == 421 and b"evil.example" in body, body
    status, body = _raw(url, f"DELETE http://evil.example/v1/namespaces/acme/contexts/victim HTTP/1.1\nHost: {here}")
    assert status == 421, body
    assert _exists(url)
    status, body = _raw(url, f"GET {url}/healthz HTTP/1.1\nHost: evil.example")
    assert status == 200, body


@pytest.mark.integration
def test_a_websocket_upgrade_is_answered_as_plain_http(node: LocalCluster) -> None:
    """The node serves no WebSocket: an upgrade request passes the gate's rules like any other."""
    url = node.urls()[0]
    upgrade = (
        "Upgrade: websocket\nConnection: Upgrade, close\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n"
        "Sec-WebSocket-Version: 13"
    )
    status, body = _raw(url, f"GET /healthz HTTP/1.1\nHost: {urlsplit(url).netloc}\n{upgrade}")
    assert status == 200, body
    status, body = _raw(url, f"GET /healthz HTTP/1.1\nHost: evil.example\n{upgrade}")
    assert status == 421, body


@pytest.mark.integration
def test_a_bodyless_post_must_not_be_a_form_post(node: LocalCluster) -> None:
    """POST /v1/node/drain carries no body: a field-less cross-site form could send it, unless it must be
    declared JSON (or carry a bearer token)."""
    drain = f"{node.urls()[0]}/v1/node/drain?timeout=0.2"
    form = httpx.post(drain)
    assert form.status_code == 415, form.text
    cross_site = httpx.post(
        drain, headers={"Content-Type": "application/json", "Origin": node.urls()[0].rsplit(":", 1)[0] + ":1"}
    )
    assert cross_site.status_code == 403, cross_site.text
    declared = httpx.post(drain, headers={"Content-Type": "application/json"})
    assert declared.status_code == 200, declared.text


def test_a_query_parameter_may_appear_once_but_for_tags() -> None:
    from mcpdb.node.http.gate import repeated_parameter

    assert repeated_parameter(b"q=tea&k=3") is None
    assert repeated_parameter(b"q=tea&tags=a&tags=b") is None
    assert repeated_parameter(b"q=tea&user_id=ada&user_id=bob") == "user_id"
    assert repeated_parameter(b"q=&q=") == "q"
    assert repeated_parameter(b"") is None
