"""OpenAI-compatible chat endpoints, and the internal ones the nodes use among themselves.

Public: ``POST /v1/chat/completions`` (streaming as server-sent events, or
one JSON body) and ``GET /v1/models``. Responses keep OpenAI's shape, so the
official ``openai`` client works; mcpdb adds an ``mcpdb`` object (serving
node, time to first token, read and context index, what assembly left out)
and the ``x-mcpdb-node`` header.

Internal: ``/v1/internal/assign`` (leader: pick a worker, take a read
index), ``/v1/internal/load`` (worker -> leader heartbeat) and
``/v1/internal/generate`` (entry node -> worker, NDJSON events).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import orjson
from fastapi import FastAPI, Header, Request
from fastapi.responses import StreamingResponse

from mcpdb.auth import Scope
from mcpdb.errors import InvalidHeader
from mcpdb.inference.request import ChatRequest
from mcpdb.node.http.access import principal_of
from mcpdb.node.http.responses import FastJSON
from mcpdb.node.http.responses import error_response as error
from mcpdb.node.internal.leader_scheduler import LeaderScheduler
from mcpdb.node.internal.messages import (
    ASSIGN_PATH,
    GENERATE_PATH,
    IDEMPOTENCY_KEY_MAX,
    LOAD_PATH,
    Assignment,
    AssignRequest,
    LoadReport,
    WorkOrder,
)
from mcpdb.node.views import NodeRegistry

if TYPE_CHECKING:
    from mcpdb.node.config import NodeConfig
    from mcpdb.node.internal.chat_front import ChatFront
    from mcpdb.node.internal.chat_worker import ChatWorker


class ChatNode(Protocol):
    """What the chat routes use of their node: the entry side (front), the leader's scheduler, the
    worker side (chat_worker, None without a model) and the registry for /v1/models."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def store(self) -> NodeRegistry: ...

    @property
    def scheduler(self) -> LeaderScheduler: ...

    @property
    def front(self) -> ChatFront: ...

    @property
    def chat_worker(self) -> ChatWorker | None: ...


def _idempotency_key(header: str | None) -> str:
    if header is None:
        return uuid.uuid4().hex
    if not header or len(header) > IDEMPOTENCY_KEY_MAX or not header.isprintable():
        raise InvalidHeader(f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} printable characters")
    return header


def _usage(done: dict[str, Any]) -> dict[str, Any]:
    usage = done["usage"]
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"]},
    }


def _provenance(done: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "node",
        "attempts",
        "ttft_s",
        "prepared_s",
        "queued_s",
        "seconds",
        "read_index",
        "context_index",
        "omitted",
        "memories",
        "earlier_turns",
        "recall",
        "replayed",
        "diverged",
        "session_version",
        "turn_count",
    )
    return {key: done.get(key) for key in keys}


def _finish_reason(done: dict[str, Any]) -> str:
    return "length" if done["finish_reason"] == "length" else "stop"


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error_payload(event: dict[str, Any]) -> dict[str, Any]:
    return {"error": {"message": event["message"], "type": event["error"], "code": event["status"]}}


def add_chat_routes(app: FastAPI, runtime: ChatNode) -> None:
    """Register the chat endpoints on ``app``."""

    @app.get("/v1/models", tags=["inference"])
    async def models() -> dict[str, Any]:
        """Models the cluster serves, with the nodes serving each (OpenAI's list shape)."""
        nodes = runtime.store.nodes()
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "mcpdb",
                    "nodes": sorted(n["id"] for n in nodes if n.get("model") == name),
                }
                for name in runtime.scheduler.served_models()
            ],
        }

    @app.post("/v1/chat/completions", tags=["inference"])
    async def chat_completions(
        request: ChatRequest, http: Request, idempotency_key: Annotated[str | None, Header()] = None
    ) -> Any:
        """OpenAI-compatible chat. With ``namespace`` + ``session_id`` the stored context is assembled
        and the new user message and the reply are appended to the session exactly once
        (``Idempotency-Key`` makes a retry return the first reply instead of a second)."""
        if request.namespace is not None:
            needed = Scope.write if request.session_id is not None else Scope.read
            principal_of(http).check(request.namespace, needed)
        key = _idempotency_key(idempotency_key)
        events = runtime.front.complete(request, key)
        # Wait for the first text (or the error) before answering: a request that cannot be served
        # gets its real status (404, 413, 503) even when streaming, and x-mcpdb-node names the node
        # that produced the first token. Raises ModelNotServed / Unavailable before any byte is sent.
        node, first = "", None
        async for event in events:
            if event["type"] == "assigned":
                node = event["node_id"]
                continue
            first = event
            break
        if first is None or first["type"] == "error":
            failure = first or {"status": 503, "error": "unavailable", "message": "the request ended without a result"}
            retry = {"retry_after": 1} if failure["status"] == 503 else {}
            return error(failure["status"], failure["error"], failure["message"], **retry)
        head = {"id": f"chatcmpl-{key}", "created": int(time.time()), "model": request.model}
        headers = {"x-mcpdb-node": first.get("node", node), "x-mcpdb-idempotency-key": key}
        if request.stream:
            return StreamingResponse(
                _stream(_chain(first, events), head), media_type="text/event-stream", headers=headers
            )
        return await _whole(_chain(first, events), head, headers)

    async def _stream(events: AsyncIterator[dict[str, Any]], head: dict[str, Any]) -> AsyncIterator[bytes]:
        base = {**head, "object": "chat.completion.chunk"}
        yield _sse(
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        )
        async for event in events:
            if event["type"] == "delta":
                yield _sse(
                    {**base, "choices": [{"index": 0, "delta": {"content": event["text"]}, "finish_reason": None}]}
                )
            elif event["type"] == "done":
                yield _sse(
                    {
                        **base,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(event)}],
                        "usage": _usage(event),
                        "mcpdb": _provenance(event),
                    }
                )
            elif event["type"] == "error":
                yield _sse(_error_payload(event))
        yield b"data: [DONE]\n\n"

    async def _whole(events: AsyncIterator[dict[str, Any]], head: dict[str, Any], headers: dict[str, str]) -> Any:
        async for event in events:
            if event["type"] == "done":
                headers["x-mcpdb-node"] = event["node"]
                body = {
                    **head,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": event["text"]},
                            "finish_reason": _finish_reason(event),
                            "logprobs": None,
                        }
                    ],
                    "usage": _usage(event),
                    "mcpdb": _provenance(event),
                }
                return FastJSON(body, headers=headers)
            if event["type"] == "error":
                retry = {"retry_after": 1} if event["status"] == 503 else {}
                return error(event["status"], event["error"], event["message"], **retry)
        return error(503, "unavailable", "the request ended without a result", retry_after=1)

    # ------------------------------------------------------------ internal
    @app.post(ASSIGN_PATH, tags=["internal"], include_in_schema=False)
    async def assign(body: AssignRequest) -> Assignment:
        return await runtime.scheduler.assign(body)

    @app.post(LOAD_PATH, tags=["internal"], include_in_schema=False)
    async def load(body: LoadReport) -> dict[str, Any]:
        runtime.scheduler.board.heartbeat(body.node_id, body.load)
        return {"ok": True}

    @app.post(GENERATE_PATH, tags=["internal"], include_in_schema=False)
    async def generate(order: WorkOrder) -> Any:
        worker = runtime.chat_worker
        if worker is None:
            return error(503, "no_inference", f"node {runtime.config.node_id} runs without a model")

        async def lines() -> AsyncIterator[bytes]:
            async for event in worker.serve(order):
                yield orjson.dumps(event) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _chain(first: dict[str, Any], events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The first text event (already read to decide status and headers), then the rest, without the
    ``assigned`` notices of later attempts."""
    yield first
    async for event in events:
        if event["type"] != "assigned":
            yield event
