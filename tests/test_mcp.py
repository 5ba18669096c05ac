"""The MCP server through the official SDK's client, over streamable HTTP and over stdio (`mcpdb mcp`),
against a real 3-node cluster: a client on one node sees writes made through another."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from mcp.shared.exceptions import MCPError

from mcpdb.ops.localcluster import LocalCluster
from tests.conftest import start_cluster
from tests.mcp_helpers import mcp_session

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = start_cluster(Path(tmp_path_factory.mktemp("mcp")))
    try:
        yield running
    finally:
        running.stop_all(graceful=False)


async def _session_walkthrough(cluster: LocalCluster, transport: str, ns: str) -> None:
    first, second = cluster.urls()[0], cluster.urls()[1]
    updates: asyncio.Queue = asyncio.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resources/subscribe is deprecated in the 2026 protocol; still served
        async with (
            mcp_session(first, transport=transport, notifications=updates) as client,
            mcp_session(second, transport=transport) as writer,
        ):
            assert client.server_capabilities.resources.subscribe
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            kinds = ("instruction", "profile", "session", "guardrail", "task", "memory")
            assert set(tools) == {
                "get_context",
                *(f"put_{kind}" for kind in kinds),
                "append_turn",
                "search_contexts",
                "chat",
            }
            assert {"namespace", "id", "expected_version", "role", "text"} <= set(
                tools["put_instruction"].input_schema["properties"]
            )

            put = await writer.call_tool(
                "put_instruction",
                {
                    "namespace": ns,
                    "id": "lawyer",
                    "role": "contract lawyer",
                    "domains": ["legal"],
                    "text": "Review {{document}} for {{client}}.",
                },
            )
            assert not put.is_error, put.content
            version = put.structured_content["version"]
            got = await client.call_tool("get_context", {"namespace": ns, "id": "lawyer"})  # linearizable
            assert got.structured_content["version"] == version
            assert got.structured_content["role"] == "contract lawyer"

            uris = [resource.uri for resource in (await client.list_resources()).resources]
            uri = f"mcpdb://{ns}/instruction/lawyer"
            assert uri in uris
            read = await client.read_resource(uri)
            assert orjson.loads(read.contents[0].text)["version"] == version

            await client.subscribe_resource(uri)
            changed = await writer.call_tool(
                "put_instruction",
                {
                    "namespace": ns,
                    "id": "lawyer",
                    "role": "contract lawyer",
                    "text": "Be brief.",
                    "expected_version": version,
                },
            )
            assert not changed.is_error, changed.content
            note = await asyncio.wait_for(updates.get(), 10)
            assert note.method == "notifications/resources/updated" and str(note.params.uri) == uri

            conflict = await writer.call_tool(
                "put_instruction",
                {"namespace": ns, "id": "lawyer", "role": "r", "text": "t", "expected_version": version},
            )
            assert conflict.is_error and orjson.loads(conflict.content[0].text)["status"] == 409
            appended = await writer.call_tool(
                "append_turn", {"namespace": ns, "id": "s1", "role": "user", "content": "hello"}
            )
            assert appended.structured_content["turn_count"] == 1
            found = await client.call_tool("search_contexts", {"namespace": ns, "query": "BRIEF"})
            assert [item["id"] for item in found.structured_content["items"]] == ["lawyer"]
            assert found.structured_content["scores"][0] > 0
            mixed = await client.call_tool("search_contexts", {"namespace": ns, "query": "x", "prefix": "law"})
            assert mixed.is_error and orjson.loads(mixed.content[0].text)["status"] == 422
            invalid = await client.call_tool("put_memory", {"namespace": ns, "id": "x"})
            assert invalid.is_error and orjson.loads(invalid.content[0].text)["status"] == 422
            missing = await client.call_tool("get_context", {"namespace": ns, "id": "nope"})
            assert missing.is_error and orjson.loads(missing.content[0].text)["error"] == "not_found"
            with pytest.raises(MCPError):
                await client.read_resource(f"mcpdb://{ns}/memory/lawyer")  # wrong kind: no such resource


def test_mcp_session_over_http(cluster: LocalCluster) -> None:
    asyncio.run(_session_walkthrough(cluster, "http", "mcp-http"))


def test_mcp_session_over_stdio(cluster: LocalCluster) -> None:
    asyncio.run(_session_walkthrough(cluster, "stdio", "mcp-stdio"))


def test_stored_instructions_are_prompts_with_arguments(cluster: LocalCluster) -> None:
    async def run() -> None:
        async with mcp_session(cluster.urls()[2]) as client:
            await client.call_tool(
                "put_instruction",
                {
                    "namespace": "prompts",
                    "id": "reviewer",
                    "role": "reviewer",
                    "text": "Review {{document}} for {{client}}.",
                },
            )
            prompts = {p.name: p for p in (await client.list_prompts()).prompts}
            arguments = {a.name: a.required for a in prompts["prompts/reviewer"].arguments}
            assert arguments == {"document": True, "client": True, "message": False}
            result = await client.get_prompt(
                "prompts/reviewer", {"document": "the NDA", "client": "ACME", "message": "Go."}
            )
            assert [m.content.text for m in result.messages] == ["Review the NDA for ACME.", "Go."]
            with pytest.raises(MCPError, match="needs the arguments"):
                await client.get_prompt("prompts/reviewer", {"document": "x"})

    asyncio.run(run())


def test_listen_stream_of_the_2026_protocol_delivers_updates(cluster: LocalCluster) -> None:
    async def run() -> None:
        async with (
            mcp_session(cluster.urls()[0], mode="auto") as client,
            mcp_session(cluster.urls()[1], mode="auto") as writer,
        ):
            assert client.protocol_version >= "2026-07-28"
            await writer.call_tool("put_memory", {"namespace": "listen", "id": "m", "facts": ["a"]})
            uri = "mcpdb://listen/memory/m"
            async with client.listen(resource_subscriptions=[uri]) as subscription:
                await writer.call_tool("put_memory", {"namespace": "listen", "id": "m", "facts": ["b"]})
                event = await asyncio.wait_for(subscription.__anext__(), 10)
                assert event.uri == uri

    asyncio.run(run())
