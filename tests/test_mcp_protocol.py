"""MCP protocol details on a real node, through the official SDK's client and raw HTTP: tool annotations and
output schemas, put schemas that are exactly what the server accepts, JSON-RPC error codes, progress of a chat
with the bundled model, and SSE streams that carry event ids and resume after a drop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import mcp_types as types
import pytest
from mcp.server.streamable_http import GET_STREAM_KEY, EventMessage
from mcp.shared.exceptions import MCPError

from mcpdb.node.mcp.events import RETRY_MS, EventLog
from mcpdb.ops.localcluster import LocalCluster
from tests.conftest import start_cluster
from tests.mcp_helpers import mcp_session, sse_events

pytestmark = pytest.mark.integration

NS = "proto"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
HANDSHAKE = "2025-11-25"  # the first handshake version whose SSE streams open with a priming event

# For each kind: a context the server stores, the fields of its own it requires, and a field of another kind.
EXAMPLES: dict[str, tuple[dict[str, Any], tuple[str, ...], dict[str, Any]]] = {
    "instruction": (
        {"role": "tutor", "text": "Explain {{topic}}.", "domains": ["teaching"], "style": "brief"},
        ("role", "text"),
        {"facts": ["x"]},
    ),
    "profile": ({"name": "Ada", "preferences": {"tone": "plain"}, "goals": ["learn Raft"]}, (), {"rules": ["be kind"]}),
    "session": (
        {"user_id": "ada", "turns": [{"role": "user", "content": "hi"}]},
        (),
        {"content": "hi", "timestamp": 1.0},
    ),
    "guardrail": (
        {"rules": ["no legal advice"], "deny_topics": ["tax"], "max_output_tokens": 50},
        ("rules",),
        {"goal": "x"},
    ),
    "task": ({"domain": "legal", "goal": "review the NDA", "status": "in_progress"}, ("domain", "goal"), {"turns": []}),
    "memory": ({"facts": ["likes tea"], "user_id": "ada", "tags": ["food"]}, ("facts",), {"role": "x"}),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = start_cluster(Path(tmp_path_factory.mktemp("mcp-protocol")), size=1)
    try:
        yield running
    finally:
        running.stop_all(graceful=False)


def _tools(tools: list[types.Tool]) -> dict[str, types.Tool]:
    return {tool.name: tool for tool in tools}


def _valid(schema: dict[str, Any], value: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def test_tools_declare_hints_and_output_schemas_their_results_meet(node: LocalCluster) -> None:
    async def run() -> None:
        async with mcp_session(node.urls()[0]) as client:
            tools = _tools((await client.list_tools()).tools)
            for name, tool in tools.items():
                hints = tool.annotations
                assert hints is not None and hints.open_world_hint is False, name
                assert tool.output_schema is not None and tool.output_schema["type"] == "object", name
                jsonschema.Draft202012Validator.check_schema(tool.output_schema)
                assert tool.input_schema["type"] == "object" and "oneOf" not in tool.input_schema, name
            for name in ("get_context", "search_contexts"):
                assert tools[name].annotations.read_only_hint is True
            for kind in EXAMPLES:
                hints = tools[f"put_{kind}"].annotations
                assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (False, True, True)
            for name in ("append_turn", "chat"):
                hints = tools[name].annotations
                assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (False, False, False)

            calls: list[tuple[str, dict[str, Any]]] = []
            for kind, (fields, _, _) in EXAMPLES.items():
                calls += [(f"put_{kind}", {"id": f"ex-{kind}", **fields}), ("get_context", {"id": f"ex-{kind}"})]
            calls += [
                ("append_turn", {"id": "ex-session", "role": "assistant", "content": "hello"}),
                ("append_turn", {"id": "ex-new", "role": "user", "content": "first"}),
                ("get_context", {"id": "ex-new"}),
                ("search_contexts", {"prefix": "ex-"}),
                ("search_contexts", {"query": "short-lived hello", "user_id": "u1"}),
                ("put_memory", {"id": "ex-ttl", "facts": ["short-lived"], "ttl": 3600}),
                ("get_context", {"id": "ex-ttl", "consistency": "stale"}),
            ]
            for name, arguments in calls:
                result = await client.call_tool(name, {"namespace": NS, **arguments})  # the SDK checks it too
                assert not result.is_error, (name, result.content)
                jsonschema.validate(result.structured_content, tools[name].output_schema)
            found = await client.call_tool("search_contexts", {"namespace": NS, "prefix": "ex-"})
            assert {item["kind"] for item in found.structured_content["items"]} == set(EXAMPLES)

    asyncio.run(run())


def test_each_kinds_put_schema_is_what_the_server_accepts(node: LocalCluster) -> None:
    async def run() -> None:
        async with mcp_session(node.urls()[0]) as client:
            tools = _tools((await client.list_tools()).tools)
            assert "put_context" not in tools
            for kind, (fields, required, foreign) in EXAMPLES.items():
                tool = tools[f"put_{kind}"]
                schema = tool.input_schema
                assert kind in tool.description and "kind" not in schema["properties"]
                assert schema["required"] == ["namespace", "id", *required], kind
                accepted = {"namespace": NS, "id": f"schema-{kind}", **fields}
                assert _valid(schema, accepted), kind
                result = await client.call_tool(tool.name, accepted)
                assert not result.is_error, (kind, result.content)
                refused = [{**accepted, **foreign}, {**accepted, "kind": kind}, {**accepted, "namespace": "No Such"}]
                for missing in ("id", *required):
                    refused.append({key: value for key, value in accepted.items() if key != missing})
                for arguments in refused:
                    assert not _valid(schema, arguments), (kind, arguments)
                    result = await client.call_tool(tool.name, arguments)
                    assert result.is_error and "422" in result.content[0].text, (kind, arguments, result.content)

    asyncio.run(run())


def _initialize(http: httpx.Client, url: str, version: str = HANDSHAKE) -> dict[str, str]:
    """Open a session by hand; the headers its later requests carry."""
    response = http.post(
        url + "/mcp",
        headers=HEADERS,
        json={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        },
    )
    assert response.status_code == 200, response.text
    session = {**HEADERS, "mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": version}
    assert (
        http.post(
            url + "/mcp", headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        ).status_code
        == 202
    )
    return session


def test_malformed_json_rpc_is_an_invalid_request(node: LocalCluster) -> None:
    url = node.urls()[0]
    with httpx.Client(timeout=10) as http:
        session = _initialize(http, url)
        for headers in (HEADERS, session):  # the request that would open a session, and one inside a session
            for body, problem in (
                ({"jsonrpc": "2.0", "id": 7}, "needs a method"),
                ({"jsonrpc": "1.0", "id": 7, "method": "tools/list"}, '"2.0"'),
                ([{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}], "batch"),
                ({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": [1]}, "object"),
            ):
                response = http.post(url + "/mcp", headers=headers, json=body)
                assert response.status_code == 400, response.text
                error = response.json()["error"]
                assert error["code"] == types.INVALID_REQUEST and problem in error["message"], error
                assert len(error["message"]) < 100, error
        broken = http.post(url + "/mcp", headers=session, content=b"{not json")
        assert broken.json()["error"]["code"] == types.PARSE_ERROR
        still = http.post(url + "/mcp", headers=session, json={"jsonrpc": "2.0", "id": 8, "method": "ping"})
        assert still.status_code == 200 and '"id":8' in still.text


def test_missing_resources_and_unknown_tools_are_protocol_errors(node: LocalCluster) -> None:
    async def run(mode: str, code: int) -> None:
        async with mcp_session(node.urls()[0], mode=mode) as client:
            for uri in (
                f"mcpdb://{NS}/memory/none",
                "file:///etc/passwd",
                f"mcpdb://{NS}/memory/bad!id",
                "mcpdb://hidden-to-nobody-but-empty/task/x",
            ):
                with pytest.raises(MCPError) as missing:
                    await client.read_resource(uri)
                assert missing.value.code == code and missing.value.data == {"uri": uri}, (mode, uri)
            with pytest.raises(MCPError) as unknown:
                await client.call_tool("no_such_tool", {})
            assert unknown.value.code == types.INVALID_PARAMS and "no_such_tool" in unknown.value.message

    asyncio.run(run("legacy", -32002))  # the handshake era: -32002 Resource not found
    asyncio.run(run("auto", types.INVALID_PARAMS))  # 2026-07-28 (SEP-2164): -32602


def test_a_dropped_stream_resumes_from_its_last_event_id(node: LocalCluster) -> None:
    url = node.urls()[0]
    call = {
        "jsonrpc": "2.0",
        "id": 42,
        "method": "tools/call",
        "params": {"name": "search_contexts", "arguments": {"namespace": NS}},
    }
    with httpx.Client(timeout=10) as http:
        session = _initialize(http, url)
        with http.stream("POST", url + "/mcp", headers=session, json=call) as stream:
            priming = next(sse_events(stream.iter_lines()))  # then the connection drops, the reply unread
        assert priming["id"] and priming["retry"] == str(RETRY_MS) and priming["data"] == ""

        def resumed(headers: dict[str, str]) -> list[dict[str, str]]:
            """What a GET with the priming event's id replays (the stream then stays open: read until quiet)."""
            events = []
            with (
                contextlib.suppress(httpx.ReadTimeout),
                http.stream(
                    "GET",
                    url + "/mcp",
                    headers={**headers, "Last-Event-ID": priming["id"]},
                    timeout=httpx.Timeout(10, read=2),
                ) as replay,
            ):
                assert replay.status_code == 200
                for event in sse_events(replay.iter_lines()):
                    events += [event] if event.get("data") else []
            return events

        replayed: list[dict[str, str]] = []
        deadline = time.monotonic() + 20
        while not replayed and time.monotonic() < deadline:  # the reply may still be on its way to the log
            replayed = resumed(session)
        assert replayed and replayed[0]["id"] and '"id":42' in replayed[0]["data"] and "items" in replayed[0]["data"]
        assert resumed(_initialize(http, url)) == []  # another session's event id replays nothing


def _note(n: int, size: int = 100) -> types.JSONRPCNotification:
    return types.JSONRPCNotification(
        jsonrpc="2.0",
        method="notifications/progress",
        params={"progressToken": 1, "progress": n, "message": "x" * size},
    )


def _reply(request_id: int) -> types.JSONRPCResponse:
    return types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result={})


class _Collected(list[EventMessage]):
    async def __call__(self, message: EventMessage) -> None:
        self.append(message)

    def progress(self) -> list[Any]:
        return [getattr(m.message, "params", {}).get("progress") for m in self]


def test_event_log_streams_end_with_their_request_and_ids_are_per_session() -> None:
    async def run() -> None:
        log = EventLog()
        a, b = log.for_session("a"), log.for_session("b")
        first = await a.store_event("1", None)
        ids = [await a.store_event("1", _note(n)) for n in range(3)]
        ids.append(await a.store_event("1", _reply(1)))
        await a.store_event("2", _note(7))  # another stream of the session
        sent = _Collected()
        assert await a.replay_events_after(first, sent) is None  # finished: replayed, then the stream ends
        assert [m.event_id for m in sent] == ids and sent.progress() == [0, 1, 2, None]

        assert await b.store_event("1", None) == first == "1"  # ids count per session: they reveal nothing
        sent = _Collected()
        unfinished = asyncio.create_task(b.replay_events_after(first, sent))  # b's own stream "1", running
        await asyncio.sleep(0.05)
        assert not unfinished.done() and not sent
        await b.store_event("1", _note(99))
        await b.store_event("1", _reply(1))
        assert await asyncio.wait_for(unfinished, 5) is None  # what came later, until the response
        assert sent.progress() == [99, None]

        again = await a.store_event("1", None)  # request id 1 used again: a stream of its own
        await a.store_event("1", _note(5))
        await a.store_event("1", _reply(1))
        sent = _Collected()
        assert await a.replay_events_after(first, sent) is None and sent.progress() == [0, 1, 2, None]
        sent = _Collected()
        assert await a.replay_events_after(again, sent) is None and sent.progress() == [5, None]

        waiting = asyncio.create_task(a.replay_events_after(await a.store_event("3", None), _Collected()))
        await asyncio.sleep(0.05)
        log.forget("a")  # the session ended: so does a replay waiting on it
        assert await asyncio.wait_for(waiting, 5) is None
        assert await a.replay_events_after(first, _Collected()) is None and await a.store_event("1", None) == "0"
        assert await b.replay_events_after("not-an-id", _Collected()) is None

    asyncio.run(run())


def test_event_log_keeps_get_stream_events_only_once_it_was_opened() -> None:
    async def run() -> None:
        log = EventLog()
        view = log.for_session("s")
        unread = await view.store_event(GET_STREAM_KEY, _note(1))
        assert len(log) == 0 and await view.replay_events_after(unread, _Collected()) is None
        log.get_stream_opened("s")
        kept = await view.store_event(GET_STREAM_KEY, _note(2))
        await view.store_event(GET_STREAM_KEY, _note(3))
        sent = _Collected()
        assert await view.replay_events_after(kept, sent) == GET_STREAM_KEY and sent.progress() == [3]

    asyncio.run(run())


def test_event_log_bounds_per_session_and_per_node() -> None:
    async def run() -> None:
        log = EventLog(max_events=100, max_bytes=50_000, session_events=40, session_bytes=20_000)
        quiet, loud = log.for_session("quiet"), log.for_session("loud")
        kept = [await quiet.store_event("1", _note(n)) for n in range(10)]
        for n in range(500):  # one session's flood stays within its quota
            await loud.store_event("2", _note(n))
        assert len(log) == 50 and log.bytes <= 50_000
        floods = [log.for_session(f"flood-{i}") for i in range(4)]
        for n in range(40):  # many sessions fill the node: the biggest lose their oldest first
            for flood in floods:
                await flood.store_event("1", _note(n))
        assert len(log) == 100
        sent = _Collected()
        replay = asyncio.create_task(quiet.replay_events_after(kept[0], sent))
        await asyncio.sleep(0.05)
        replay.cancel()
        assert sent.progress() == list(range(1, 10))  # the quiet session lost nothing
        for n in range(10):  # big events: the byte bounds hold too
            await loud.store_event("3", _note(n, size=6_000))
        assert log.bytes <= 50_000

    asyncio.run(run())


@pytest.fixture(scope="module")
def llm_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = start_cluster(
        Path(tmp_path_factory.mktemp("mcp-progress")), size=1, inference=True, extra_args=["--n-ctx", "2048"]
    )
    try:
        running.wait_models(timeout=120)
        yield running
    finally:
        running.stop_all(graceful=False)


def test_chat_reports_progress_as_the_reply_streams(llm_node: LocalCluster) -> None:
    async def run() -> None:
        reports: list[tuple[float, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reports.append((progress, message))

        async with mcp_session(llm_node.urls()[0]) as client:
            tools = _tools((await client.list_tools()).tools)
            result = await client.call_tool(
                "chat",
                {"namespace": NS, "message": "Say hello.", "max_tokens": 8, "session_id": "progress"},
                progress_callback=on_progress,
            )
            assert not result.is_error, result.content
            jsonschema.validate(result.structured_content, tools["chat"].output_schema)
            done = [progress for progress, _ in reports]
            assert done and done == sorted(set(done)) and all(float(n).is_integer() for n in done)  # pieces so far
            reply = result.structured_content["reply"]  # each report has the pieces since the one before
            assert "".join(message or "" for _, message in reports).strip() == reply.strip() != ""

    asyncio.run(run())
