"""What one MCP client cannot take from a node's others (issue 12's security review), on a real node with a
bootstrap token and scoped tokens: resumed streams end with their request and are bounded per session and per
token, listen streams are bounded per token, a subscriber that stops reading holds one pending notification per
resource, one session's flood leaves the other sessions' events resumable, and a revoked token's sessions and
streams end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from mcpdb.client import Client
from mcpdb.node.mcp.sessions import MAX_STREAMS_PER_SESSION
from mcpdb.ops.localcluster import LocalCluster
from tests.mcp_helpers import bounded_mcp_node, gauge, mcp_session, sse_events

pytestmark = pytest.mark.integration

ROOT = "root-bootstrap-token-for-exhaustion-tests"
PER_TOKEN, IDLE_S = 3, 5  # idle sessions expire after IDLE_S: long enough for a loaded CI machine
VERSION = "2025-11-25"  # the first handshake version whose streams open with a priming event (resumable)
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from bounded_mcp_node(Path(tmp_path_factory.mktemp("exhaustion")), ROOT, PER_TOKEN, 20, IDLE_S)


def _token(node: LocalCluster, scope: str = "read", namespace: str = "acme") -> dict[str, Any]:
    with Client(node.urls(), token=ROOT) as root:
        return root.create_token({namespace: scope}, "exhaustion test")


def _open(http: httpx.Client, url: str, token: str) -> dict[str, str]:
    """A new session of ``token``; the headers its requests carry."""
    opened = http.post(
        url + "/mcp",
        headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT},
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
        },
    )
    assert opened.status_code == 200, opened.text
    session = {
        "Authorization": f"Bearer {token}",
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "Mcp-Session-Id": opened.headers["mcp-session-id"],
        "Mcp-Protocol-Version": VERSION,
    }
    assert (
        http.post(
            url + "/mcp", headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        ).status_code
        == 202
    )
    return session


def _call(
    http: httpx.Client,
    url: str,
    session: dict[str, str],
    request_id: int,
    method: str,
    params: dict[str, Any] | None = None,
) -> list[dict[str, str]]:
    """A request's whole SSE stream (priming event first)."""
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})}
    with http.stream("POST", url + "/mcp", headers=session, json=body) as stream:
        assert stream.status_code == 200
        return list(sse_events(stream.iter_lines()))


class _Held:
    """A GET stream held open by a thread until ``close``; ``status`` once answered, ``ended`` once the server
    ended it."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.status: int | None = None
        self.body = ""
        self.ended = threading.Event()
        self._answered = threading.Event()
        self._http = httpx.Client(timeout=httpx.Timeout(5, read=None))
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()
        assert self._answered.wait(10), "the GET was not answered"

    def _run(self, url: str, headers: dict[str, str]) -> None:
        with contextlib.suppress(httpx.HTTPError), self._http.stream("GET", url + "/mcp", headers=headers) as stream:
            self.status = stream.status_code
            self._answered.set()
            for chunk in stream.iter_text():
                self.body += chunk
        self._answered.set()
        self.ended.set()

    def close(self) -> None:
        self._http.close()
        self._thread.join(5)


def test_a_finished_requests_stream_resumes_and_then_ends(node: LocalCluster) -> None:
    """The probe: 4 pings, then 4 GETs resuming the first ping's stream. They stayed open forever (a live
    stream registered for a request long answered) and kept the session from expiring."""
    url = node.urls()[0]
    token = _token(node)["token"]
    with httpx.Client(timeout=10) as http:
        session = _open(http, url, token)
        streams = [_call(http, url, session, n, "ping") for n in range(1, 5)]
        priming = streams[0][0]
        assert priming["data"] == "" and priming["id"]
        _call(http, url, session, 1, "ping")  # request id 1 again: a stream of its own
        other = _open(http, url, token)
        # Event ids count per session: they show nothing of other sessions' traffic.
        assert _call(http, url, other, 1, "ping")[0]["id"] == priming["id"]
        assert http.delete(url + "/mcp", headers=other).status_code == 200
    resumed = [_Held(url, {**session, "Last-Event-ID": priming["id"]}) for _ in range(4)]
    try:
        for held in resumed:
            assert held.status == 200
            assert held.ended.wait(10), "a resumed stream of a finished request stayed open"
            # What the client had missed: the first ping's reply (only: the second ping 1 is another stream).
            assert held.body.count('"id":1') == 1 and '"result"' in held.body
        time.sleep(IDLE_S + 2)
        with httpx.Client(timeout=10) as http:  # nothing held the session: it expired
            expired = http.post(url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 9, "method": "ping"})
        assert expired.status_code == 404
    finally:
        for held in resumed:
            held.close()


@pytest.fixture(scope="module")
def big(node: LocalCluster) -> dict[str, Any]:
    """A tool call whose reply is about 2 MB."""
    with Client(node.urls(), token=ROOT) as root:
        root.put("acme", "big", {"kind": "memory", "facts": ["x" * 200_000] * 5})
    return {"name": "get_context", "arguments": {"namespace": "acme", "id": "big"}}


class _Stalled:
    """A GET that reads its status line and no more, its receive buffer as small as the kernel allows."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = httpx.URL(url)
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._socket.connect((parts.host, parts.port))
        lines = [
            "GET /mcp HTTP/1.1",
            f"Host: {parts.host}:{parts.port}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self._socket.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.status = int(self._socket.recv(12).split()[1])

    def close(self) -> None:
        self._socket.close()


# Long context ids make long notifications: the buffers between a stalled client and the node fill sooner.
STALLED_IDS = [f"stalled-{n}-" + "x" * 100 for n in range(250)]


@pytest.fixture(scope="module")
def stalled_ops(node: LocalCluster) -> list[dict[str, Any]]:
    ops = [
        {"op": "put", "id": context_id, "context": {"kind": "task", "domain": "d", "goal": "g"}}
        for context_id in STALLED_IDS
    ]
    with Client(node.urls(), token=ROOT) as root:
        root.batch("acme", ops)
    return ops


def _stall(url: str, http: httpx.Client, sessions: list[dict[str, str]], ops: list[dict[str, Any]]) -> list[_Stalled]:
    """Subscribe ``sessions`` to every stalled context, open their GET streams and read none, and write until
    notifications wait for the clients: once the buffers are full, every send of those sessions waits too."""
    for session in sessions:
        for n, context_id in enumerate(STALLED_IDS, 100):
            _call(http, url, session, n, "resources/subscribe", {"uri": f"mcpdb://acme/task/{context_id}"})
    streams = [_Stalled(url, session) for session in sessions]
    assert [stream.status for stream in streams] == [200] * len(sessions)
    with Client([url], token=ROOT) as root:
        deadline = time.monotonic() + 120
        stalled = (len(STALLED_IDS) - 1) * len(sessions)  # every resource pending but the one being sent
        while True:
            root.batch("acme", ops)
            time.sleep(0.5)  # a session still read from catches up meanwhile
            if gauge(url, "mcpdb_mcp_notifications_pending", ROOT) >= stalled:
                break
            assert time.monotonic() < deadline, "the stalled streams never filled"
    return streams


def test_a_subscriber_that_stops_reading_holds_one_pending_notification_per_resource(
    node: LocalCluster, stalled_ops: list[dict[str, Any]]
) -> None:
    """Every change used to start a task of its own for a stalled client, each waiting forever."""
    url = node.urls()[0]
    with httpx.Client(timeout=10) as http:
        session = _open(http, url, _token(node)["token"])
        streams = _stall(url, http, [session], stalled_ops)
        with Client(node.urls(), token=ROOT) as root:
            for _ in range(20):
                root.batch("acme", stalled_ops)
        assert gauge(url, "mcpdb_mcp_notifications_pending", ROOT) <= len(STALLED_IDS)  # one per resource at most
        streams[0].close()
        assert http.delete(url + "/mcp", headers=session).status_code == 200
    time.sleep(1)
    assert gauge(url, "mcpdb_mcp_notifications_pending", ROOT) == 0
    assert gauge(url, "mcpdb_mcp_change_listeners", ROOT) == 0


def _pending_request(url: str, session: dict[str, str]) -> str:
    """A ping on a stalled session (its reply waits behind the stalled stream): its priming event's id."""
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST", url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
        ) as stream,
    ):
        assert stream.status_code == 200
        return next(sse_events(stream.iter_lines()))["id"]


def test_get_streams_are_bounded_per_session_and_per_token(
    node: LocalCluster, stalled_ops: list[dict[str, Any]]
) -> None:
    url = node.urls()[0]
    token = _token(node)["token"]
    held: list[_Stalled | _Held] = []
    with httpx.Client(timeout=10) as http:
        first, second = _open(http, url, token), _open(http, url, token)
        held += _stall(url, http, [first, second], stalled_ops)  # a notification stream each
        try:
            resume = [{**session, "Last-Event-ID": _pending_request(url, session)} for session in (first, second)]
            for _ in range(MAX_STREAMS_PER_SESSION - 1):  # resuming a request still running: open until it ends
                held.append(_Held(url, resume[0]))
            assert all(h.status == 200 for h in held)
            over = http.get(url + "/mcp", headers=resume[0])
            assert over.status_code == 429 and "GET streams" in over.json()["error"]["message"]
            for _ in range(2 * PER_TOKEN - MAX_STREAMS_PER_SESSION - 1):
                held.append(_Held(url, resume[1]))
                assert held[-1].status == 200
            over = http.get(url + "/mcp", headers=resume[1])
            assert over.status_code == 429 and "--mcp-sessions-per-token" in over.json()["error"]["message"]
            assert not any(h.ended.is_set() for h in held if isinstance(h, _Held))
        finally:
            for stream in held:
                stream.close()
        for session in (first, second):
            assert http.delete(url + "/mcp", headers=session).status_code == 200


def test_listen_streams_are_bounded_per_token(node: LocalCluster) -> None:
    """2026-era listen streams belong to no session: the session bounds did not reach them, and one token could
    take every listen stream of the node."""
    url = node.urls()[0]
    greedy, other = _token(node)["token"], _token(node)["token"]

    async def run() -> None:
        async with mcp_session(url, token=greedy, mode="auto") as client, contextlib.AsyncExitStack() as streams:
            for _ in range(PER_TOKEN):
                await streams.enter_async_context(client.listen(resource_subscriptions=["mcpdb://acme/task/x"]))
            with pytest.raises(MCPError, match="--mcp-sessions-per-token"):
                async with client.listen(resource_subscriptions=["mcpdb://acme/task/x"]):
                    pass
            assert gauge(url, "mcpdb_mcp_listen_streams", ROOT) == PER_TOKEN
            async with (
                mcp_session(url, token=other, mode="auto") as neighbour,
                neighbour.listen(resource_subscriptions=["mcpdb://acme/task/x"]),
            ):
                assert gauge(url, "mcpdb_mcp_listen_streams", ROOT) == PER_TOKEN + 1  # the greedy token's share only
        await asyncio.sleep(0.5)
        assert gauge(url, "mcpdb_mcp_listen_streams", ROOT) == 0

    asyncio.run(run())


def test_one_sessions_flood_leaves_the_other_sessions_resumable(node: LocalCluster, big: dict[str, Any]) -> None:
    """The node's event log is shared: one token's big replies used to push every other session's events out."""
    url = node.urls()[0]
    with httpx.Client(timeout=30) as http:
        victim = _open(http, url, _token(node)["token"])
        priming = _call(http, url, victim, 1, "ping")[0]["id"]
        flooder = _open(http, url, _token(node)["token"])
        for n in range(1, 20):  # ~40 MB of replies, more than the node's whole log
            _call(http, url, flooder, n, "tools/call", big)
        with http.stream("GET", url + "/mcp", headers={**victim, "Last-Event-ID": priming}) as resumed:
            body = resumed.read().decode()
        assert '"id":1' in body and '"result"' in body
        for session in (victim, flooder):
            http.delete(url + "/mcp", headers=session)


def test_revoking_a_token_ends_its_sessions_and_streams(node: LocalCluster) -> None:
    url = node.urls()[0]
    doomed = _token(node)
    with httpx.Client(timeout=10) as http:
        session = _open(http, url, doomed["token"])
    notifications = _Held(url, session)
    lost: list[BaseException] = []

    async def listen(ready: asyncio.Event) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            async with mcp_session(url, token=doomed["token"], mode="auto") as client:
                try:
                    async with client.listen(resource_subscriptions=["mcpdb://acme/task/x"]) as events:
                        ready.set()
                        async for _ in events:
                            pass
                except Exception as ended:  # noqa: BLE001 - how the stream ended is what the test looks at
                    lost.append(ended)

    async def run() -> None:
        ready = asyncio.Event()
        listening = asyncio.create_task(listen(ready))
        await asyncio.wait_for(ready.wait(), 10)
        assert notifications.status == 200 and not notifications.ended.is_set()
        with Client(node.urls(), token=ROOT) as root:
            root.revoke_token(doomed["id"])
        await asyncio.wait_for(listening, 10)
        assert lost, "the revoked token's listen stream went on"  # ended by an error (the SDK: SubscriptionLost)

    try:
        asyncio.run(run())
        assert notifications.ended.wait(10), "the revoked token's GET stream stayed open"
    finally:
        notifications.close()
