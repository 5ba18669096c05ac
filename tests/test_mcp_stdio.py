"""`mcpdb mcp`, the stdio relay, run as a desktop client runs it (the official SDK's stdio client starting
the real command) against a real node with a bootstrap token: a refused token, any other refusal and an
unreachable node each reach the client as a JSON-RPC error that names the cause, and the relay exits by
itself, without a traceback, once the client closes its stdin."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mcp.client.stdio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, JSONRPCError, JSONRPCRequest

from mcpdb.client import Client as McpdbClient
from mcpdb.ops.localcluster import free_port
from tests.conftest import start_cluster
from tests.mcp_helpers import mcpdb_command, relay_parameters

pytestmark = pytest.mark.integration

ROOT_TOKEN = "relay-bootstrap-token-for-tests"
GRACE_S = 20.0  # the SDK client's wait for the relay to exit by itself before it kills it (2 s by default)
EXIT_S = 10.0  # a whole exchange, relay start to relay exit, takes well under this when the relay exits by itself
DEADLINE_S = 60.0  # past this the client is taken to hang: no answer is coming


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    running = start_cluster(Path(tmp_path_factory.mktemp("relay")), size=1, token=ROOT_TOKEN)
    try:
        yield running.urls()[0]
    finally:
        running.stop_all(graceful=False)


@pytest.fixture(autouse=True)
def patient_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the client's grace so that a relay that does not exit by itself shows as a slow close
    (it would otherwise be killed within 2 s, which a fast exit is hard to tell from)."""
    monkeypatch.setattr(mcp.client.stdio, "PROCESS_TERMINATION_TIMEOUT", GRACE_S)


def _innermost(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _list_tools(server: StdioServerParameters, stderr_file: Path) -> MCPError | None:
    """Initialize and list the tools through the relay; the error the client got, if any."""
    with stderr_file.open("w") as errlog:
        try:
            async with Client(stdio_client(server, errlog=errlog), mode="legacy") as client:
                await client.list_tools()
        except BaseException as failed:  # the SDK raises a session's error inside task groups
            error = _innermost(failed)
            if isinstance(error, MCPError):
                return error
            raise
    return None


def _through_relay(url: str, token: str | None, tmp_path: Path) -> tuple[MCPError | None, float, str]:
    """The client's error, the seconds from the relay's start to its exit, and what it wrote on stderr."""
    started = time.monotonic()
    error = asyncio.run(asyncio.wait_for(_list_tools(relay_parameters(url, token), tmp_path / "stderr"), DEADLINE_S))
    return error, time.monotonic() - started, (tmp_path / "stderr").read_text()


def test_relay_exits_by_itself_when_the_client_closes(node: str, tmp_path: Path) -> None:
    error, seconds, stderr = _through_relay(node, ROOT_TOKEN, tmp_path)
    assert error is None
    assert seconds < EXIT_S, f"the relay was still running {GRACE_S:g} s after the client closed its stdin"
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (None, "needs a bearer token: pass --token or set MCPDB_TOKEN"),
        ("wrong-token", "refused the bearer token (wrong or revoked): check --token or MCPDB_TOKEN"),
    ],
)
def test_a_missing_or_wrong_token_is_named_in_the_error(
    node: str, tmp_path: Path, token: str | None, says: str
) -> None:
    error, seconds, stderr = _through_relay(node, token, tmp_path)
    assert error is not None and error.code == INTERNAL_ERROR
    assert error.message == f"the node at {node} {says}"
    assert error.data == {"status": 401, "error": "unauthorized"}
    assert seconds < EXIT_S and "Traceback" not in stderr, stderr


def _refused_case(node: str, case: str) -> tuple[str, str, int, str]:
    """(--url, --token, status, what the message says) of a request the node refuses."""
    with McpdbClient([node], token=ROOT_TOKEN) as root:
        if case == "forbidden":  # a namespace token on a cluster administrator's path
            return (
                f"{node}/v1/cluster/members",
                root.create_token({"a": "read"})["token"],
                403,
                "answered 403 Forbidden: this needs an admin token for every namespace (admin on '*')",
            )
        if case == "not_found":  # a URL with a path, a likely slip
            return (
                f"{node}/ui",
                ROOT_TOKEN,
                404,
                "answered 404 Not Found (is --url the node's address, without a path?)",
            )
        limited = root.create_token({"a": "read"}, rate_limit=0.001)["token"]
    assert httpx.get(
        f"{node}/v1/namespaces/a/contexts", headers={"Authorization": f"Bearer {limited}"}
    ).status_code in (200, 404)  # spends the one request its bucket holds
    return node, limited, 429, "answered 429 Too Many Requests: this token is limited to 0.001 requests/s per node"


@pytest.mark.parametrize("case", ["forbidden", "not_found", "rate_limited"])
def test_other_refusals_say_what_the_node_answered(node: str, tmp_path: Path, case: str) -> None:
    url, token, status, says = _refused_case(node, case)
    error, seconds, stderr = _through_relay(url, token, tmp_path)
    assert error is not None and error.code == INTERNAL_ERROR
    assert error.message == f"the node at {url} {says}"
    assert error.data == {"status": status, "error": case}
    assert seconds < EXIT_S and "Traceback" not in stderr, stderr


async def _two_requests(server: StdioServerParameters, stderr_file: Path) -> list[JSONRPCError]:
    """Send two requests (no initialize) before reading, then read the two answers."""
    with stderr_file.open("w") as errlog:
        async with stdio_client(server, errlog=errlog) as (from_relay, to_relay):
            for request_id, method in ((1, "ping"), (2, "tools/list")):
                await to_relay.send(SessionMessage(JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)))
            answers = []
            for _ in range(2):
                answer = await from_relay.receive()
                assert isinstance(answer, SessionMessage) and isinstance(answer.message, JSONRPCError), answer
                answers.append(answer.message)
    return sorted(answers, key=lambda answer: str(answer.id))


def _two_errors(url: str, token: str | None, tmp_path: Path) -> tuple[list[JSONRPCError], float, str]:
    """The answers to two requests, the seconds from the relay's start to its exit, and its stderr."""
    started = time.monotonic()
    answers = asyncio.run(
        asyncio.wait_for(_two_requests(relay_parameters(url, token), tmp_path / "stderr"), DEADLINE_S)
    )
    return answers, time.monotonic() - started, (tmp_path / "stderr").read_text()


def test_each_request_to_an_unreachable_node_gets_an_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    answers, seconds, stderr = _two_errors(url, None, tmp_path)
    assert [answer.id for answer in answers] == [1, 2]
    for answer in answers:
        assert answer.error.code == INTERNAL_ERROR
        assert answer.error.message == f"cannot reach the node at {url}: connection refused"
    assert seconds < EXIT_S and "Traceback" not in stderr, stderr


def test_the_nodes_own_json_rpc_errors_pass_unchanged(node: str, tmp_path: Path) -> None:
    """A request before initialize: the node answers 400 with a JSON-RPC error, which is already readable."""
    answers, seconds, stderr = _two_errors(node, ROOT_TOKEN, tmp_path)
    assert [answer.id for answer in answers] == [1, 2]
    for answer in answers:
        assert (answer.error.code, answer.error.message) == (INVALID_REQUEST, "Bad Request: Missing session ID")
    assert seconds < EXIT_S and "Traceback" not in stderr, stderr


@pytest.mark.parametrize(("url", "says"), [("http://", "names no host"), ("http://[::1", "is not a URL")])
def test_a_malformed_url_is_refused_in_one_line(url: str, says: str) -> None:
    ran = subprocess.run(
        [mcpdb_command(), "mcp", "--url", url],
        input="",
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )
    assert ran.returncode == 1 and says in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
