"""The MCP tools of a node: context reads and writes, search and chat, on the same service as REST.

Arguments are named as in REST (``namespace``, ``id``, the kind's fields,
``expected_version``). Every input and output schema is generated from the
pydantic models that validate the arguments and describe the results, so what
a tool declares is what the server accepts and returns.

Writes are one tool per kind (``put_instruction``, ``put_session``, ...) rather
than one ``put_context`` with a ``oneOf`` by kind: each kind's schema is then a
flat object naming exactly its fields and which are required, and the model
APIs that MCP clients hand tool schemas to (Anthropic's, OpenAI's, Bedrock,
Vertex) refuse or silently drop a tool whose input schema has ``oneOf`` at its
root.

Every tool checks the caller's scope in the namespace exactly as the REST gate
does (404 for a namespace it holds no scope in, 403 for too weak a scope), and
failures come back as tool errors carrying REST's status and error code, so an
agent can tell a conflict from a missing context. An unknown tool is a
protocol error (-32602), as the spec asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import anyio
import mcp_types as types
import orjson
from mcp.shared.exceptions import MCPError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from mcpdb.auth import Principal, Scope
from mcpdb.errors import McpdbServerError, ModelNotServed
from mcpdb.inference.request import ChatMessage, ChatRequest
from mcpdb.model import CONTEXT_ID_PATTERN, NAMESPACE_PATTERN, ContextIn, Kind, SearchMode, Turn
from mcpdb.node.http.responses import error_parts
from mcpdb.node.mcp.node_view import ToolsNode
from mcpdb.service import Consistency

PROGRESS_INTERVAL_S = 0.2  # a chat sends at most one progress notification this often
PROGRESS_FLUSH_S = 5.0  # how long a chat's reply waits for its last progress notification to go out

Progress = Callable[[int, str], Awaitable[None]]
"""Reports a chat's progress: the number of pieces of the reply streamed so far and the text of those
not reported yet."""


@dataclass(frozen=True)
class Caller:
    """Who calls a tool, and where its progress goes (None: the caller asked for none)."""

    principal: Principal
    progress: Progress | None = None


# ------------------------------------------------------------------ arguments
class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespace: str = Field(pattern=NAMESPACE_PATTERN, description="the namespace (an application): 1-63 of a-z 0-9 _ -")


_ContextId = Annotated[
    str, Field(pattern=CONTEXT_ID_PATTERN, description="the context's id: 1-128 of A-Z a-z 0-9 _ . : @ -")
]


class GetContextArgs(_Args):
    id: _ContextId
    consistency: Consistency = Field(
        default=Consistency.linearizable, description="linearizable (default) or stale (this node's replica, faster)"
    )


class _PutArgs(_Args):
    model_config = ConfigDict(extra="forbid", str_max_length=256 * 1024)
    id: _ContextId
    expected_version: int | None = Field(
        default=None,
        ge=0,
        description="compare-and-set: the version the "
        "context must have now (0 = it must not exist yet); omit to overwrite",
    )


class AppendTurnArgs(_Args):
    id: Annotated[str, Field(pattern=CONTEXT_ID_PATTERN, description="the session's id (created if missing)")]
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    expected_version: int | None = Field(default=None, ge=0)
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=128, description="a retry with the same key appends nothing more"
    )


class SearchArgs(_Args):
    query: str = Field(
        default="",
        max_length=4096,
        description="words to rank contexts by (see mode), best first; without it, contexts are listed in id order",
    )
    kind: Kind | None = Field(default=None, description="only this kind (sessions are listed, never ranked)")
    prefix: str = Field(default="", max_length=128, description="id prefix (listing only)")
    user_id: str | None = Field(default=None, max_length=256, description="ranked: that user's contexts and nobody's")
    tags: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=32, description="ranked: contexts carrying all of these"
    )
    limit: int = Field(default=20, ge=1, le=100)
    mode: SearchMode = Field(default="hybrid", description="ranked: lexical (BM25), vector, or both fused")

    @model_validator(mode="after")
    def _ranked_or_listed(self) -> SearchArgs:
        if self.query and (self.prefix or self.kind == "session"):
            raise ValueError("a ranked search (query) takes no id prefix and cannot search sessions")
        if not self.query and (self.user_id is not None or self.tags):
            raise ValueError("user_id and tags narrow a ranked search: give a query")
        return self


class ChatArgs(_Args):
    message: str = Field(min_length=1)
    session_id: str | None = Field(default=None, description="the session to assemble context from and append to")
    user_id: str | None = None
    task_id: str | None = None
    model: str | None = Field(default=None, description="default: the first model the cluster serves")
    max_tokens: int | None = Field(default=None, ge=1, le=32768)


def _kind_models() -> dict[str, type[BaseModel]]:
    """Each kind's model (mcpdb.model), keyed by kind, from the ContextIn union itself."""
    members: tuple[type[BaseModel], ...] = get_args(get_args(ContextIn)[0])
    return {get_args(model.model_fields["kind"].annotation)[0]: model for model in members}


KIND_MODELS = _kind_models()


def put_arguments(kind: str) -> type[BaseModel]:
    """``put_<kind>``'s arguments: where to write, then the kind's own fields (its ``kind`` is the tool's)."""
    fields: dict[str, Any] = {
        name: (field.annotation, field) for name, field in KIND_MODELS[kind].model_fields.items() if name != "kind"
    }
    return create_model(f"Put{kind.capitalize()}Args", __base__=_PutArgs, **fields)


# -------------------------------------------------------------------- results
class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Stored(_Result):
    """What the store adds to a context's fields."""

    namespace: str
    id: str
    version: int = Field(ge=1, description="Raft index of the last write")
    created_at: float
    updated_at: float
    expires_at: float | None


def _record(kind: str, model: type[BaseModel]) -> type[BaseModel]:
    extra: dict[str, Any] = {}
    if kind == "session":  # the turns live apart from the fields; lists leave them out
        extra["turn_count"] = (int, Field(ge=0))
    return create_model(f"{kind.capitalize()}Record", __base__=(model, _Stored), **extra)


ContextRecord: Any = Annotated[
    functools.reduce(operator.or_, (_record(k, m) for k, m in KIND_MODELS.items())), Field(discriminator="kind")
]
"""A stored context as get_context and search_contexts return it, by kind."""


class PutResult(_Result):
    namespace: str
    id: str
    version: int
    created: bool = Field(description="false when an existing context was replaced")


class AppendResult(_Result):
    namespace: str
    id: str
    version: int
    turn_count: int
    first_seq: int = Field(description="the position of the appended turn in the session")
    replayed: bool = Field(description="true when the idempotency key had already appended it")


SearchResult = create_model(
    "SearchResult",
    __base__=_Result,
    items=(list[ContextRecord], ...),
    scores=(
        list[float] | None,
        Field(
            default=None,
            description="ranked: each item's score in the items' order, best first (BM25 for mode lexical, "
            "cosine for vector, relative score fusion for hybrid)",
        ),
    ),
)


class Usage(_Result):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class ChatResult(_Result):
    reply: str
    node: str = Field(description="the node whose model answered")
    finish_reason: str | None
    usage: Usage
    session_version: int | None = Field(description="the session's version after the reply was appended")


def _object_schema(shape: Any) -> dict[str, Any]:
    """``shape``'s JSON schema with ``type: object`` at its root, as MCP asks of an output schema."""
    return {"type": "object", **TypeAdapter(shape).json_schema()}


class ToolFailure(Exception):
    """A failure reported by a later stage (the chat worker) with its REST status and code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


# ---------------------------------------------------------------------- tools
Handler = Callable[[Caller, Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class _Tool:
    arguments: type[BaseModel]
    result: Any
    run: Handler
    description: str
    annotations: types.ToolAnnotations

    def definition(self, name: str) -> types.Tool:
        return types.Tool(
            name=name,
            description=self.description,
            input_schema=self.arguments.model_json_schema(),
            output_schema=_object_schema(self.result),
            annotations=self.annotations,
        )


def _hints(
    title: str, *, read_only: bool, destructive: bool = False, idempotent: bool = False
) -> types.ToolAnnotations:
    """A closed world: every tool acts on this cluster's own store and model, nothing outside it."""
    return types.ToolAnnotations(
        title=title,
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=False,
    )


def _result(value: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=orjson.dumps(value).decode())], structured_content=value
    )


class _ProgressFeed:
    """A chat's progress, sent by a task of its own: the chat never waits for its client (which may have
    stopped reading while the chat holds an inference slot), and the pieces that stream meanwhile go out
    together, at most one notification per ``PROGRESS_INTERVAL_S``, so neither the stream nor the
    session's event log carries one event per piece."""

    def __init__(self, report: Progress) -> None:
        self._report = report
        self._pieces = 0
        self._unsent: list[str] = []
        self._arrived = asyncio.Event()
        self._finished = asyncio.Event()
        self._sender = asyncio.get_running_loop().create_task(self._send())

    def add(self, text: str) -> None:
        self._pieces += 1
        self._unsent.append(text)
        self._arrived.set()

    async def _send(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if self._unsent:
                text = "".join(self._unsent)
                self._unsent.clear()
                try:
                    await self._report(self._pieces, text)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return  # the request's stream is gone: nobody to report to
            if self._finished.is_set() and not self._unsent:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), PROGRESS_INTERVAL_S)

    async def finish(self) -> None:
        """Send what is left before the reply (progress after it would be void); give up after
        ``PROGRESS_FLUSH_S``."""
        self._finished.set()
        self._arrived.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sender, PROGRESS_FLUSH_S)

    def cancel(self) -> None:
        self._sender.cancel()


def tool_error(status: int, error: str, message: str) -> types.CallToolResult:
    body = {"status": status, "error": error, "message": message}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=orjson.dumps(body).decode())], is_error=True
    )


class ContextTools:
    """The tools, bound to one node."""

    def __init__(self, runtime: ToolsNode) -> None:
        self._runtime = runtime
        self._service = runtime.service
        self._tools: dict[str, _Tool] = {
            "get_context": _Tool(
                GetContextArgs,
                ContextRecord,
                self._get,
                "Read a context (linearizable by default).",
                _hints("Read a context", read_only=True, idempotent=True),
            ),
            **{
                f"put_{kind}": _Tool(
                    put_arguments(kind),
                    PutResult,
                    self._putter(kind, model),
                    f"Create or replace the {kind} `id` in `namespace`, whole (fields left out "
                    f"take their defaults); `expected_version` makes it a compare-and-set. "
                    f"{model.__doc__}",
                    _hints(f"Write {kind}", read_only=False, destructive=True, idempotent=True),
                )
                for kind, model in KIND_MODELS.items()
            },
            "append_turn": _Tool(
                AppendTurnArgs,
                AppendResult,
                self._append,
                "Append one turn to a session (created if missing).",
                _hints("Append a turn", read_only=False),
            ),
            "search_contexts": _Tool(
                SearchArgs,
                SearchResult,
                self._search,
                "Find the contexts that best match a query (BM25 and embeddings fused, best first; optionally one "
                "user's and nobody's, of one kind, with given tags), or without a query list them by kind "
                "and id prefix.",
                _hints("Search contexts", read_only=True, idempotent=True),
            ),
            "chat": _Tool(
                ChatArgs,
                ChatResult,
                self._chat,
                "Ask the cluster's model, with the stored context of the session, user and task "
                "assembled into the prompt; the reply is appended to the session. With a progress "
                "token, the reply is reported as it streams (the pieces of each moment together).",
                _hints("Chat with the cluster's model", read_only=False),
            ),
        }

    def list(self) -> list[types.Tool]:
        return [tool.definition(name) for name, tool in self._tools.items()]

    async def call(self, caller: Caller, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        tool = self._tools.get(name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name!r}; the tools are {', '.join(self._tools)}")
        try:
            args = tool.arguments.model_validate(arguments or {})
            return _result(await tool.run(caller, args))
        except ValidationError as invalid:
            return tool_error(
                422,
                "invalid_arguments",
                "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in invalid.errors()),
            )
        except ToolFailure as failure:
            return tool_error(failure.status, failure.error, failure.message)
        except McpdbServerError as failure:
            status, error, message, _ = error_parts(failure)
            return tool_error(status, error, message)

    async def _get(self, caller: Caller, args: GetContextArgs) -> dict[str, Any]:
        caller.principal.check(args.namespace, Scope.read)
        return await self._service.get(args.namespace, args.id, args.consistency)

    def _putter(self, kind: str, model: type[BaseModel]) -> Handler:
        async def put(caller: Caller, args: _PutArgs) -> dict[str, Any]:
            caller.principal.check(args.namespace, Scope.write)
            context = model.model_validate({"kind": kind, **args.model_dump(exclude=set(_PutArgs.model_fields))})
            return await self._service.put(args.namespace, args.id, context, args.expected_version)

        return put

    async def _append(self, caller: Caller, args: AppendTurnArgs) -> dict[str, Any]:
        caller.principal.check(args.namespace, Scope.write)
        turn = Turn(role=args.role, content=args.content, metadata=args.metadata)
        return await self._service.append(
            args.namespace, args.id, [turn], args.expected_version, args.idempotency_key or uuid.uuid4().hex
        )

    async def _search(self, caller: Caller, args: SearchArgs) -> dict[str, Any]:
        caller.principal.check(args.namespace, Scope.read)
        if not args.query:
            page = await self._service.list(args.namespace, args.kind, args.prefix, args.limit)
            return {"items": page.items}
        found = await self._service.search(
            args.namespace, args.query, args.kind, args.user_id, args.tags, args.limit, args.mode
        )
        return {
            "items": [result["context"] for result in found["results"]],
            "scores": [result["score"] for result in found["results"]],
        }

    async def _chat(self, caller: Caller, args: ChatArgs) -> dict[str, Any]:
        caller.principal.check(args.namespace, Scope.write if args.session_id else Scope.read)
        served = self._runtime.scheduler.served_models()
        model = args.model or (served[0] if served else None)
        if model is None:
            raise ModelNotServed("no node serves a model yet")
        request = ChatRequest(
            model=model,
            messages=[ChatMessage(role="user", content=args.message)],
            max_tokens=args.max_tokens,
            namespace=args.namespace,
            session_id=args.session_id,
            user_id=args.user_id,
            task_id=args.task_id,
        )
        feed = None if caller.progress is None else _ProgressFeed(caller.progress)
        try:
            async with contextlib.aclosing(self._runtime.front.complete(request, uuid.uuid4().hex)) as events:
                async for event in events:
                    if event["type"] == "delta" and feed is not None:
                        feed.add(event["text"])
                    elif event["type"] == "done":
                        break
                    elif event["type"] == "error":
                        raise ToolFailure(event["status"], event["error"], event["message"])
                else:
                    raise ToolFailure(503, "unavailable", "the request ended without a result")
            if feed is not None:
                await feed.finish()  # the model is done with the request already
        finally:
            if feed is not None:
                feed.cancel()
        return {
            "reply": event["text"],
            "node": event["node"],
            "finish_reason": event["finish_reason"],
            "usage": event["usage"],
            "session_version": event.get("session_version"),
        }
