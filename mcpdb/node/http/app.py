"""The REST v1 API of a node (FastAPI). Any node accepts any request.

Status codes: 400 malformed input (bad JSON, bad id, bad header), 401 token,
404 missing, 409 version conflict or wrong kind, 413 body too large, 422 a
body that parses but breaks the schema, 503 with Retry-After when the
cluster cannot commit or confirm a read within the request timeout. The
503 body says whether the write certainly did not apply (``applied: no``)
or may still apply (``applied: unknown``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from mcpdb import __version__
from mcpdb.errors import McpdbServerError, NotFound
from mcpdb.model import BatchIn, ContextIn, Kind, SearchableKind, SearchMode, Turn, TurnsIn
from mcpdb.node.autoscaling import add_autoscale_routes
from mcpdb.node.config import ConfigError, split_host_port
from mcpdb.node.http.access import confirmed_of
from mcpdb.node.http.chat_api import add_chat_routes
from mcpdb.node.http.conditions import expected_version
from mcpdb.node.http.docs import mount_offline_docs
from mcpdb.node.http.fast_context import FastContextRoutes
from mcpdb.node.http.gate import RequestGate
from mcpdb.node.http.host_guard import HostGuard
from mcpdb.node.http.node_view import NodeView
from mcpdb.node.http.overview_api import add_overview_routes
from mcpdb.node.http.request_stats import TimedApp
from mcpdb.node.http.responses import ContextIdPath, FastJSON, NamespacePath, error_for, versioned
from mcpdb.node.http.responses import error_response as _error
from mcpdb.node.http.token_api import add_token_routes
from mcpdb.node.http.watch_api import add_watch_routes
from mcpdb.node.mcp.server import McpServer
from mcpdb.service import Consistency

SNAPSHOT_TIMEOUT_S = 600.0  # a snapshot of a large store takes a while; the node serves meanwhile


class MemberIn(BaseModel):
    raft_addr: str = Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")

    @field_validator("raft_addr")
    @classmethod
    def _reachable_address(cls, value: str) -> str:
        try:
            host, _ = split_host_port(value, "raft_addr")
        except ConfigError as error:
            raise ValueError(str(error)) from None
        if host in ("0", "0.0.0.0", "::") or host.startswith("0."):
            raise ValueError("raft_addr must be an address other nodes can reach, not a wildcard")
        return value


def create_app(runtime: NodeView) -> Any:
    """Build the ASGI app of one node, wrapped in auth and body-size middleware."""

    mcp = McpServer(runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        async with mcp.running():
            yield
        await runtime.stop()

    app = FastAPI(
        title="mcpdb",
        version=__version__,
        default_response_class=FastJSON,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # OpenTelemetry hooks look up providers and the environment on
        # every request; mcpdb's metrics are Prometheus.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        description="Raft-replicated context database for LLM applications.",
    )
    service = runtime.service
    mount_offline_docs(app)

    # ------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> FastJSON:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "invalid_json", "request body is not valid JSON")
        parts = []
        for e in errors:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{where or 'body'}: {e.get('msg')}")
        # Echoing "input" back could return a megabyte body; type, place and message suffice.
        detail = [
            {"type": e.get("type"), "loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg")} for e in errors
        ]
        return _error(422, "invalid_request", "; ".join(parts), detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> FastJSON:
        if exc.status_code == 400:  # the body could not be decoded at all
            return _error(
                400,
                "invalid_json",
                "request body is not valid JSON: not UTF-8, malformed, or nested deeper than the decoder allows",
            )
        name = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, name, str(exc.detail))

    async def domain_error(_: Request, exc: Exception) -> FastJSON:
        assert isinstance(exc, McpdbServerError)  # registered for that tree only
        return error_for(exc)

    app.add_exception_handler(McpdbServerError, domain_error)

    # ------------------------------------------------------------ health
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the process serves HTTP."""
        return {"status": "ok", "node": runtime.config.node_id}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> Any:
        """Readiness: a leader is known and this node has applied what it knows is committed."""
        ready, reason = runtime.ready()
        body = {"ready": ready, "reason": reason, "node": runtime.config.node_id}
        return FastJSON(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "1"})

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        """Prometheus metrics of this node (text format): Raft, store, read barriers, inference."""
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/node", tags=["cluster"])
    async def node_status() -> dict[str, Any]:
        """This node's own view: role, term, commit and applied index, store size."""
        return runtime.local_status()

    @app.post("/v1/node/snapshot", tags=["cluster"])
    async def snapshot() -> dict[str, Any]:
        """Compact this node's log now: a snapshot written beside the running node (it keeps
        serving and replicating meanwhile). Answers once it is on disk, with its index and size."""
        return await runtime.replication.snapshot(SNAPSHOT_TIMEOUT_S)

    @app.get("/v1/cluster", tags=["cluster"])
    async def cluster_status() -> dict[str, Any]:
        """Members, roles, leader, term, and commit/applied index per node."""
        return await runtime.cluster_status()

    @app.post("/v1/cluster/members", status_code=201, tags=["cluster"])
    async def add_member(member: MemberIn) -> dict[str, Any]:
        """Add a voter. Start the new node first with every current voter as ``--peer``."""
        await runtime.replication.change_membership("add", member.raft_addr, runtime.config.request_timeout)
        return {"added": member.raft_addr, "voters": runtime.replication.voters()}

    @app.delete("/v1/cluster/members/{raft_addr}", tags=["cluster"])
    async def remove_member(raft_addr: str) -> dict[str, Any]:
        """Remove a voter by Raft address."""
        if raft_addr not in runtime.replication.voters():
            raise NotFound(f"{raft_addr} is not a voter")
        await runtime.replication.change_membership("remove", raft_addr, runtime.config.request_timeout)
        for node in runtime.store.nodes():
            if node.get("raft_addr") == raft_addr:
                await service.deregister_node(node["id"])
        return {"removed": raft_addr, "voters": runtime.replication.voters()}

    # ------------------------------------------------------------ contexts
    ns_path = "/v1/namespaces/{namespace}"

    @app.put(ns_path + "/contexts/{context_id}", tags=["contexts"])
    async def put_context(
        namespace: NamespacePath,
        context_id: ContextIdPath,
        context: Annotated[ContextIn, Body()],
        if_match: Annotated[str | None, Header()] = None,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> FastJSON:
        """Create or replace a context. ``If-Match: <version>`` makes it a compare-and-set
        (409 with the current version on mismatch); ``If-None-Match: *`` creates only."""
        expected = expected_version(if_match, if_none_match)
        result = await service.put(namespace, context_id, context, expected)
        return versioned(result, result["version"], 201 if result["created"] else 200)

    @app.get(ns_path + "/contexts/{context_id}", tags=["contexts"])
    async def get_context(
        namespace: NamespacePath,
        context_id: ContextIdPath,
        request: Request,
        consistency: Consistency = Consistency.linearizable,
    ) -> FastJSON:
        """Read a context; linearizable by default, ``stale`` reads local state without a barrier."""
        record = await service.get(namespace, context_id, consistency, confirmed_of(request))
        return versioned(record, record["version"])

    @app.delete(ns_path + "/contexts/{context_id}", tags=["contexts"])
    async def delete_context(
        namespace: NamespacePath, context_id: ContextIdPath, if_match: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Delete a context (404 if missing); ``If-Match`` makes it conditional."""
        return await service.delete(namespace, context_id, expected_version(if_match, None))

    @app.get(ns_path + "/contexts", tags=["contexts"])
    async def list_contexts(
        namespace: NamespacePath,
        request: Request,
        kind: Kind | None = None,
        prefix: Annotated[str, Query(max_length=128)] = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=128)] = None,
        consistency: Consistency = Consistency.linearizable,
    ) -> dict[str, Any]:
        """Contexts in id order, filtered by kind and id prefix; follow ``next_cursor`` for more.
        Sessions are listed without their turns (``turn_count`` says how many)."""
        page = await service.list(namespace, kind, prefix, limit, cursor, consistency, confirmed_of(request))
        return {"items": page.items, "next_cursor": page.next_cursor}

    @app.get(ns_path + "/search", tags=["contexts"])
    async def search(
        namespace: NamespacePath,
        request: Request,
        q: Annotated[str, Query(min_length=1, max_length=4096, description="what to look for, in words")],
        kind: SearchableKind | None = None,
        user_id: Annotated[str | None, Query(max_length=256)] = None,
        tags: Annotated[list[Annotated[str, Query(max_length=256)]] | None, Query(max_length=32)] = None,
        k: Annotated[int, Query(ge=1, le=100)] = 5,
        mode: SearchMode = "hybrid",
        consistency: Consistency = Consistency.linearizable,
    ) -> dict[str, Any]:
        """The ``k`` contexts that best match ``q``, best first. ``mode``: ``lexical`` ranks by BM25 over
        their text (a memory's facts and tags, an instruction's role, domains and text, a profile's
        name, goals and preferences, a guardrail's rules, a task's goal), ``vector`` by the cosine of
        their embeddings to the query's, ``hybrid`` (default) fuses both (each scaled to 0..1,
        vector weighted 0.8; the newer context first on a tie); sessions are not searched.
        ``user_id``: that user's contexts and nobody's, as a chat reads them; ``tags`` (repeat it):
        contexts carrying all of them. Linearizable by default. ``terms`` is what the query became
        (stopwords dropped, words stemmed), ``matched`` how many contexts share a term with it,
        ``unembedded`` how many of the searched contexts have no vector yet (they rank lexically
        only). A ``q`` with no word, or ranked by words alone with none the index holds (stopwords,
        words over 32 characters), is refused (422 ``invalid_query``)."""
        return await service.search(namespace, q, kind, user_id, tags, k, mode, consistency, confirmed_of(request))

    @app.post(ns_path + "/sessions/{session_id}/turns", tags=["sessions"])
    async def append_turns(
        namespace: NamespacePath,
        session_id: ContextIdPath,
        body: Annotated[TurnsIn | Turn, Body()],
        if_match: Annotated[str | None, Header()] = None,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> dict[str, Any]:
        """Append one turn (``{"role", "content"}``) or several (``{"turns": [...]}``) atomically.
        Creates the session if missing. With ``Idempotency-Key``, a retry returns the first result."""
        turns = body.turns if isinstance(body, TurnsIn) else [body]
        return await service.append(namespace, session_id, turns, expected_version(if_match, None), idempotency_key)

    @app.post(ns_path + "/batch", tags=["contexts"])
    async def batch(namespace: NamespacePath, body: BatchIn) -> dict[str, Any]:
        """Several puts and deletes as one log entry: all apply or none (409 names the op)."""
        return await service.batch(namespace, body)

    add_chat_routes(app, runtime)
    add_watch_routes(app, runtime)
    add_token_routes(app, runtime)
    add_overview_routes(app, runtime)
    add_autoscale_routes(app, runtime)
    # The MCP endpoint is the SDK's own ASGI app (streamable HTTP: POST, GET stream, DELETE).
    app.router.routes.append(Route("/mcp", endpoint=mcp.asgi, methods=["GET", "POST", "DELETE"]))
    stats = runtime.metrics.requests
    guard = HostGuard(
        runtime.config.http_addr,
        runtime.config.advertise_url,
        runtime.config.allowed_hosts,
        runtime.config.allowed_origins,
    )
    return RequestGate(
        FastContextRoutes(TimedApp(app, stats), service, stats),
        guard,
        runtime.authenticator,
        runtime.config.max_body_bytes,
        runtime.config.body_timeout,
        stats,
    )
