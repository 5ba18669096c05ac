"""``GET /v1/namespaces/{ns}/watch``: a namespace's changes as server-sent events.

Each event is one change: ``event:`` the action (put, append, delete,
expire), ``id:`` its position in the history (see ``mcpdb.store.changes.event_id``),
``data:`` the change as JSON. A watch starts after ``since`` (or the
``Last-Event-ID`` header an EventSource sends when it reconnects), or, with
neither, at a linearizable read index: every change committed after the
request arrived is delivered, nothing from before. Events carry no values:
a watcher that needs one reads the context (at least at that version).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Protocol

import orjson
from fastapi import FastAPI, Header, Query
from fastapi.responses import StreamingResponse

from mcpdb.errors import HistoryTrimmed
from mcpdb.model import Kind, check_namespace
from mcpdb.node.http.responses import NamespacePath
from mcpdb.service import Consistency, ContextService
from mcpdb.store.changes import ChangeFeed, Cursor, WatchFilter
from mcpdb.store.state_machine import Change

KEEPALIVE_S = 15.0


class ChangeHistory(Protocol):
    def changes_after(self, version: int, position: int | None = None, limit: int = 1000) -> list[Change]:
        """Changes after (version, position) in commit order; HistoryTrimmed when the history no longer
        reaches back that far."""


class WatchNode(Protocol):
    """What the watch route uses of its node: a read index to start at, the history, the live feed."""

    @property
    def service(self) -> ContextService: ...

    @property
    def store(self) -> ChangeHistory: ...

    @property
    def change_feed(self) -> ChangeFeed: ...


def change_event(change: Change, event_id: str) -> bytes:
    data = orjson.dumps(
        {
            "version": change.version,
            "namespace": change.namespace,
            "id": change.id,
            "kind": change.kind,
            "action": change.action,
        }
    )
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), change.action.encode(), data)


def add_watch_routes(app: FastAPI, runtime: WatchNode) -> None:
    @app.get(
        "/v1/namespaces/{namespace}/watch",
        tags=["watch"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}},
            410: {"description": "the history no longer reaches back to `since`"},
        },
    )
    async def watch(
        namespace: NamespacePath,
        prefix: Annotated[str, Query(max_length=128)] = "",
        kind: Kind | None = None,
        since: Annotated[str | None, Query(max_length=32, pattern=r"^\d+(\.\d+)?$")] = None,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> StreamingResponse:
        """Stream the namespace's changes in commit order from any node; resumable from any event id.
        410 ``compacted`` (with ``oldest_version``) when the history was trimmed past ``since``."""
        check_namespace(namespace)
        start = since if since is not None else last_event_id
        if start is None:
            cursor = Cursor(await runtime.service.read_index(Consistency.linearizable) or 0)
        else:
            cursor = Cursor.parse(start)
        runtime.store.changes_after(cursor.version, cursor.position, 1)  # 410 now rather than mid-stream
        wanted = WatchFilter(namespace, prefix, kind)

        async def events() -> AsyncIterator[bytes]:
            yield b": watching %s after %s\n\n" % (namespace.encode(), str(cursor.version).encode())
            try:
                async for batch in runtime.change_feed.follow(cursor, KEEPALIVE_S):
                    chunk = b"".join(
                        change_event(change, event_id) for change, event_id in batch if wanted.matches(change)
                    )
                    if chunk:
                        yield chunk
                    elif not batch:
                        yield b": keep-alive\n\n"
            except HistoryTrimmed as trimmed:
                error = {"error": "compacted", "message": str(trimmed), "oldest_version": trimmed.oldest}
                yield b"event: error\ndata: %s\n\n" % orjson.dumps(error)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
