"""Hostile input against a real node: schemathesis over the OpenAPI document, and bodies, ids and clients
chosen to break parsers. Each gets a clean 4xx, never a 500, and leaves the store unchanged."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mcpdb.ops.localcluster import LocalCluster
from tests.conftest import start_cluster

pytestmark = pytest.mark.integration

BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = start_cluster(
        Path(tmp_path_factory.mktemp("hardening")),
        size=1,
        extra_args=["--body-timeout", str(BODY_TIMEOUT_S), "--max-body-bytes", "65536"],
    )
    try:
        yield running
    finally:
        running.stop_all(graceful=False)


def _contexts(url: str, ns: str = "h") -> list[str]:
    return [item["id"] for item in httpx.get(f"{url}/v1/namespaces/{ns}/contexts").json()["items"]]


TASK = '{"kind": "task", "domain": "d", "goal": "g", "data": %s}'


@pytest.mark.parametrize(
    "body, status, error",
    [
        (TASK % ('{"a":' * 5000 + "1" + "}" * 5000), 400, "invalid_json"),  # deeper than the decoder goes
        (TASK % ('{"a":' * 40 + "1" + "}" * 40), 422, "invalid_request"),  # deeper than stored documents may
        ((TASK % "{}").replace('"g"', '"\xff\xfe"').encode("latin-1"), 400, "invalid_json"),  # not UTF-8
        (TASK % '{"n": 123456789012345678901234567890}', 422, "invalid_value"),  # beyond 64-bit integers
        (TASK % '{"s": "\\udc00"}', 422, "invalid_value"),  # a lone surrogate
        ("[1, 2", 400, "invalid_json"),
        ("null", 422, "invalid_request"),
    ],
)
def test_hostile_bodies_get_clean_errors_and_store_nothing(
    node: LocalCluster, body: str | bytes, status: int, error: str
) -> None:
    url = node.urls()[0]
    response = httpx.put(
        f"{url}/v1/namespaces/h/contexts/c", content=body, headers={"content-type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]) == (status, error), response.text
    assert "c" not in _contexts(url)


@pytest.mark.parametrize(
    "context_id", ["a%2Fb", "a%00b", "a%0Ab", "x" * 129, "%E2%80%AE", "a%20b", "%FF", ".hidden", "-x", "a\\b"]
)
def test_odd_ids_are_refused(node: LocalCluster, context_id: str) -> None:
    url = node.urls()[0]
    response = httpx.put(
        f"{url}/v1/namespaces/h/contexts/{context_id}", json={"kind": "task", "domain": "d", "goal": "g"}
    )
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"] in ("invalid_name", "not_found")
    assert _contexts(url) == []


def test_oversized_bodies_get_413_whether_declared_or_streamed(node: LocalCluster) -> None:
    url = node.urls()[0]
    big = b'{"kind": "task", "domain": "d", "goal": "' + b"g" * 70_000 + b'"}'
    json_body = {"content-type": "application/json"}
    declared = httpx.put(f"{url}/v1/namespaces/h/contexts/big", content=big, headers=json_body)
    streamed = httpx.put(
        f"{url}/v1/namespaces/h/contexts/big", content=iter([big[:40_000], big[40_000:]]), headers=json_body
    )
    assert declared.status_code == streamed.status_code == 413
    assert _contexts(url) == []


def test_a_client_trickling_its_body_gets_408_and_writes_nothing(node: LocalCluster) -> None:
    host, port = node.urls()[0].removeprefix("http://").split(":")
    body = b'{"kind": "task", "domain": "d", "goal": "slow"}'
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"PUT /v1/namespaces/h/contexts/slow HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (host.encode(), len(body)) + body[:10]
        )
        started = time.monotonic()
        answer = sock.recv(4096)
        waited = time.monotonic() - started
        while b"request_timeout" not in answer and (more := sock.recv(4096)):  # the body may come in a later read
            answer += more
        assert b" 408 " in answer.split(b"\r\n")[0] and b"request_timeout" in answer
        assert BODY_TIMEOUT_S * 0.8 <= waited < BODY_TIMEOUT_S + 3
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(50):  # the node closed the connection: the rest of the body has nowhere to go
                sock.sendall(body[10:])
                time.sleep(0.05)
    assert _contexts(url=node.urls()[0]) == []


def test_schemathesis_finds_no_server_error_and_no_schema_violation(node: LocalCluster, tmp_path: Path) -> None:
    """The property-based run the README's security section summarises (more examples there)."""
    url = node.urls()[0]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "15",
            # Endless streams (watch) and cluster membership (adding members takes the quorum away:
            # its 503s are right, and test_membership covers it) are left out.
            "--exclude-path-regex",
            "/watch$|/v1/cluster/members",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )  # its cache goes in the cwd, not the repo
    assert run.returncode == 0, run.stdout[-4000:]
    assert " passed" in run.stdout and "failures" not in run.stdout.split("SUMMARY")[-1].lower()
