"""The MCP tools of a node: context reads and writes, search and chat, on the same service as REST.

Arguments are named as in REST (``namespace``, ``id``, ``kind``, the kind's
fields, ``expected_version``); each tool's input schema is generated from the
pydantic model that validates it. Every tool checks the caller's scope in
the namespace exactly as the REST gate does (404 for a namespace it holds no
scope in, 403 for too weak a scope), and failures come back as tool errors
carrying REST's status and error code, so an agent can tell a conflict from
a missing context.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import mcp_types as types
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcpdb.auth import Principal, Scope
from mcpdb.chat_request import ChatRequest
from mcpdb.model import CONTEXT_IN_ADAPTER, MAX_TTL_SECONDS, Kind, Turn
from mcpdb.service import Consistency
from nodes.responses import DOMAIN_ERRORS, error_parts
from nodes.scheduling import ModelNotServed

SEARCH_SCAN_PAGE = 200


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespace: str = Field(description="the namespace (an application)")


class GetContextArgs(_Args):
    id: str
    consistency: Consistency = Consistency.linearizable


class PutContextArgs(_Args):
    """Besides these, the kind's own fields (as in REST's body), e.g. ``role`` and ``text`` for an instruction."""

    model_config = ConfigDict(extra="allow")
    id: str
    kind: Kind
    expected_version: int | None = Field(default=None, ge=0, description="compare-and-set; 0 = create only")
    ttl: int | None = Field(default=None, ge=1, le=MAX_TTL_SECONDS)


class AppendTurnArgs(_Args):
    id: str = Field(description="the session's id (created if missing)")
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    expected_version: int | None = Field(default=None, ge=0)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)


class SearchArgs(_Args):
    kind: Kind | None = None
    prefix: str = Field(default="", max_length=128, description="id prefix")
    text: str = Field(default="", max_length=1000, description="case-insensitive text in the context's fields")
    limit: int = Field(default=20, ge=1, le=100)


class ChatArgs(_Args):
    message: str = Field(min_length=1)
    session_id: str | None = Field(default=None, description="the session to assemble context from and append to")
    user_id: str | None = None
    task_id: str | None = None
    model: str | None = Field(default=None, description="default: the first model the cluster serves")
    max_tokens: int | None = Field(default=None, ge=1, le=32768)


class ToolFailure(Exception):
    """A failure reported by a later stage (the chat worker) with its REST status and code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _put_schema() -> dict[str, Any]:
    """PutContextArgs' schema plus every kind's own fields, so a client sees what it may send."""
    schema = PutContextArgs.model_json_schema()
    kinds = CONTEXT_IN_ADAPTER.json_schema()
    for definition in kinds.get("$defs", {}).values():
        for name, field in definition.get("properties", {}).items():
            if name not in schema["properties"] and "$ref" not in orjson.dumps(field).decode():
                schema["properties"][name] = field
    return schema


def _result(value: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=orjson.dumps(value).decode())],
                                structured_content=value)


def tool_error(status: int, error: str, message: str) -> types.CallToolResult:
    body = {"status": status, "error": error, "message": message}
    return types.CallToolResult(content=[types.TextContent(type="text", text=orjson.dumps(body).decode())],
                                is_error=True)


class ContextTools:
    """The tools, bound to one node's runtime (``runtime``: a NodeRuntime)."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._service = runtime.service
        self._tools: dict[str, tuple[type[BaseModel], Callable[[Principal, Any], Awaitable[dict[str, Any]]], str,
                                     dict[str, Any]]] = {
            "get_context": (GetContextArgs, self._get, "Read a context (linearizable by default).",
                            GetContextArgs.model_json_schema()),
            "put_context": (PutContextArgs, self._put, "Create or replace a context of a kind, with the kind's "
                            "fields; expected_version makes it a compare-and-set.", _put_schema()),
            "append_turn": (AppendTurnArgs, self._append, "Append one turn to a session (created if missing).",
                            AppendTurnArgs.model_json_schema()),
            "search_contexts": (SearchArgs, self._search, "Find contexts by kind, id prefix and text "
                                "(sessions are matched on their fields, not their turns).",
                                SearchArgs.model_json_schema()),
            "chat": (ChatArgs, self._chat, "Ask the cluster's model, with the stored context of the session, "
                     "user and task assembled into the prompt; the reply is appended to the session.",
                     ChatArgs.model_json_schema()),
        }

    def list(self) -> list[types.Tool]:
        return [types.Tool(name=name, description=description, input_schema=schema)
                for name, (_, _, description, schema) in self._tools.items()]

    async def call(self, principal: Principal, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        if name not in self._tools:
            return tool_error(404, "unknown_tool", f"no tool {name!r}; the tools are {', '.join(self._tools)}")
        model, handler, _, _ = self._tools[name]
        try:
            args = model.model_validate(arguments or {})
            return _result(await handler(principal, args))
        except ValidationError as invalid:
            return tool_error(422, "invalid_arguments", "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in invalid.errors()))
        except ModelNotServed as missing:
            return tool_error(404, "model_not_found", str(missing))
        except ToolFailure as failure:
            return tool_error(failure.status, failure.error, failure.message)
        except DOMAIN_ERRORS as failure:
            status, error, message, _ = error_parts(failure)
            return tool_error(status, error, message)

    async def _get(self, principal: Principal, args: GetContextArgs) -> dict[str, Any]:
        principal.check(args.namespace, Scope.read)
        return await self._service.get(args.namespace, args.id, args.consistency)

    async def _put(self, principal: Principal, args: PutContextArgs) -> dict[str, Any]:
        principal.check(args.namespace, Scope.write)
        context = CONTEXT_IN_ADAPTER.validate_python(
            {"kind": args.kind, **({"ttl": args.ttl} if args.ttl else {}), **(args.model_extra or {})})
        return await self._service.put(args.namespace, args.id, context, args.expected_version)

    async def _append(self, principal: Principal, args: AppendTurnArgs) -> dict[str, Any]:
        principal.check(args.namespace, Scope.write)
        turn = Turn(role=args.role, content=args.content, metadata=args.metadata)
        return await self._service.append(args.namespace, args.id, [turn], args.expected_version,
                                          args.idempotency_key or uuid.uuid4().hex)

    async def _search(self, principal: Principal, args: SearchArgs) -> dict[str, Any]:
        principal.check(args.namespace, Scope.read)
        needle = args.text.lower()
        found: list[dict[str, Any]] = []
        cursor = None
        consistency = Consistency.linearizable
        while len(found) < args.limit:
            page = await self._service.list(args.namespace, args.kind, args.prefix, SEARCH_SCAN_PAGE, cursor,
                                            consistency)
            consistency = Consistency.stale  # one read index covers the whole scan
            found += [item for item in page.items if needle in orjson.dumps(item).decode().lower()]
            cursor = page.next_cursor
            if cursor is None:
                break
        return {"items": found[:args.limit]}

    async def _chat(self, principal: Principal, args: ChatArgs) -> dict[str, Any]:
        principal.check(args.namespace, Scope.write if args.session_id else Scope.read)
        served = self._runtime.scheduler.served_models()
        model = args.model or (served[0] if served else None)
        if model is None:
            raise ModelNotServed("no node serves a model yet")
        request = ChatRequest(model=model, messages=[{"role": "user", "content": args.message}],
                              max_tokens=args.max_tokens, namespace=args.namespace, session_id=args.session_id,
                              user_id=args.user_id, task_id=args.task_id)
        async for event in self._runtime.front.complete(request, uuid.uuid4().hex):
            if event["type"] == "done":
                return {"reply": event["text"], "node": event["node"], "finish_reason": event["finish_reason"],
                        "usage": event["usage"], "session_version": event.get("session_version")}
            if event["type"] == "error":
                raise ToolFailure(event["status"], event["error"], event["message"])
        raise ToolFailure(503, "unavailable", "the request ended without a result")
