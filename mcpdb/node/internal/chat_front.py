"""The entry node's side of a chat request: ask the leader for a worker, stream from it, retry.

Any node accepts ``/v1/chat/completions``. It asks the leader for an
assignment (a worker and a read index), then streams the worker's events
back. If the worker dies or is cut off mid-request, the request goes to
another node with the same idempotency key and the same sampling seed:

- if the first worker's append committed before it died, the new worker
  finds it under the key and replays the stored reply (no second turn);
- otherwise the new worker generates again from the same prompt with the
  same seed, which reproduces the same tokens, so the text the caller
  already received is a prefix of the new reply and only the rest is sent.

The caller gets the reply once, or a clear error; the session never gets
the turn twice, because the append itself is idempotent in the state machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx
import orjson

from mcpdb.errors import ModelNotServed, NotLeader, Unavailable
from mcpdb.inference.request import ChatRequest
from mcpdb.node.internal.chat_worker import ChatWorker
from mcpdb.node.internal.leader_scheduler import LeaderScheduler
from mcpdb.node.internal.messages import ASSIGN_PATH, GENERATE_PATH, Assignment, AssignRequest, WorkOrder
from mcpdb.raft.replication import Replication
from mcpdb.store.state_machine import ContextStore

MAX_ATTEMPTS = 3
ASSIGN_RETRY_S = 0.1
# Assignment waits this much longer than the node's request timeout: when the lost worker was also the
# leader, an election (under 1 s measured, 2 s target) and the new leader's first load reports (0.5 s)
# come before any node can be assigned.
FAILOVER_GRACE_S = 2.5
STREAM_IDLE_TIMEOUT_S = 30.0  # a worker silent this long (partitioned, paused) is given up on


class WorkerLost(Exception):
    """The worker's stream ended without a result: it died, was cut off or stalled."""


class ChatFront:
    def __init__(
        self,
        node_id: str,
        replication: Replication,
        store: ContextStore,
        scheduler: LeaderScheduler,
        chat_worker: ChatWorker | None,
        http: Callable[[], httpx.AsyncClient],
        assign_timeout: float,
    ) -> None:
        self._node_id = node_id
        self._replication = replication
        self._store = store
        self._scheduler = scheduler
        self._chat_worker = chat_worker
        self._http = http
        self._assign_timeout = assign_timeout

    # ------------------------------------------------------------ assignment
    def leader_url(self) -> str | None:
        leader = self._replication.leader_addr()
        return next((n["http_url"] for n in self._store.nodes() if leader and n.get("raft_addr") == leader), None)

    async def _assign_once(self, body: AssignRequest) -> Assignment:
        if self._replication.is_leader():
            return await self._scheduler.assign(body)
        url = self.leader_url()
        if url is None:
            raise Unavailable("no leader known")
        try:
            response = await self._http().post(
                url + ASSIGN_PATH,
                content=body.model_dump_json(),
                headers={"content-type": "application/json"},
                timeout=5.0,
            )
        except httpx.HTTPError as error:
            raise Unavailable(f"leader unreachable: {error!r}") from None
        if response.status_code == 404:
            raise ModelNotServed(response.json().get("message", "model not served"))
        if response.status_code != 200:
            raise Unavailable(response.json().get("message", f"assign failed: HTTP {response.status_code}"))
        return Assignment.model_validate_json(response.content)

    async def _assign(self, body: AssignRequest) -> Assignment:
        """Retry through elections and empty load boards until the timeout, then 503."""
        deadline = time.monotonic() + self._assign_timeout + FAILOVER_GRACE_S
        while True:
            try:
                return await self._assign_once(body)
            except (Unavailable, NotLeader) as error:
                if time.monotonic() + ASSIGN_RETRY_S > deadline:
                    raise Unavailable(
                        f"no worker assigned within {self._assign_timeout + FAILOVER_GRACE_S:g} s: {error}"
                    ) from None
                await asyncio.sleep(ASSIGN_RETRY_S)

    # ------------------------------------------------------------ one attempt
    async def _events_from(self, assignment: Assignment, order: WorkOrder) -> AsyncIterator[dict[str, Any]]:
        if assignment.node_id == self._node_id and self._chat_worker is not None:
            async for event in self._chat_worker.serve(order):
                yield event
            return
        timeout = httpx.Timeout(STREAM_IDLE_TIMEOUT_S, connect=2.0)
        try:
            async with self._http().stream(
                "POST",
                assignment.http_url + GENERATE_PATH,
                content=order.model_dump_json(),
                headers={"content-type": "application/json"},
                timeout=timeout,
            ) as response:
                if response.status_code != 200:
                    raise WorkerLost(f"worker {assignment.node_id} answered HTTP {response.status_code}")
                async for line in response.aiter_lines():
                    if line:
                        yield orjson.loads(line)
        except httpx.HTTPError as error:
            raise WorkerLost(f"worker {assignment.node_id} lost: {error!r}") from None

    # ------------------------------------------------------------ the request
    async def complete(self, request: ChatRequest, idempotency_key: str) -> AsyncGenerator[dict[str, Any], None]:
        """Events for the caller: ``assigned`` per attempt, ``delta`` (only new text), then ``done`` or
        ``error``. Raises ModelNotServed or Unavailable before the first event if nothing can serve it."""
        seed = request.seed_for(idempotency_key)
        body = AssignRequest(
            model=request.model, session_key=request.session_key(), namespace=request.namespace, task_id=request.task_id
        )
        sent = ""  # text the caller has already received, over all attempts
        last_failure = "no attempt made"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                assignment = await self._assign(body)
            except (Unavailable, ModelNotServed) as error:
                if attempt == 1:
                    raise
                last_failure = str(error)
                break
            yield {"type": "assigned", "attempt": attempt, **assignment.model_dump()}
            order = WorkOrder(
                request=request, read_index=assignment.read_index, idempotency_key=idempotency_key, seed=seed
            )
            text = ""
            try:
                async for event in self._events_from(assignment, order):
                    if event["type"] == "delta":
                        text += event["text"]
                        if len(text) > len(sent) and text.startswith(sent):
                            yield {"type": "delta", "text": text[len(sent) :]}
                            sent = text
                    elif event["type"] == "done":
                        yield {**event, "attempts": attempt, "diverged": not event["text"].startswith(sent)}
                        return
                    elif event["status"] == 503:
                        raise WorkerLost(event["message"])
                    else:
                        yield event
                        return
                raise WorkerLost(f"worker {assignment.node_id} ended its stream without a result")
            except WorkerLost as lost:
                last_failure = str(lost)
                body = body.model_copy(update={"exclude": [*body.exclude, assignment.node_id]})
        yield {
            "type": "error",
            "status": 503,
            "error": "unavailable",
            "message": f"no node completed the request after {MAX_ATTEMPTS} attempts: {last_failure}",
        }
