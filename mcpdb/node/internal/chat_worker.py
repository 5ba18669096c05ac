"""The worker half of a chat request: runs on the node the leader assigned.

1. Wait until this replica applied what of the request's read index
   concerns the chat's namespace: its entries and those of no namespace
   (ReadIndex: the leader took it from a read barrier, so contexts read here
   are linearizable without another round trip, and not behind another
   tenant's batch).
2. If the session already holds an append made with this request's
   idempotency key (an earlier attempt finished on a node that then died),
   replay the stored reply instead of generating a second one.
3. Gather the contexts from the local store (the memories ranked by the new
   user message), assemble them into the model's window, generate
   (streaming), and append the new user message, with what was recalled for
   it, and the reply to the session through Raft, once, under the
   idempotency key.

Output is a stream of events (dicts): ``delta`` with text, then ``done``
with usage and provenance, or ``error`` with an HTTP status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mcpdb.errors import McpdbServerError, Overloaded
from mcpdb.inference.assembly import Assembled, StoredContext, assemble, recalled_by
from mcpdb.inference.gather import Gathered, gather, recall_query
from mcpdb.inference.llama_worker import Generation, Worker
from mcpdb.inference.prompt_format import ChatFormat
from mcpdb.inference.prompt_tokens import Tokenizer
from mcpdb.inference.request import ChatRequest
from mcpdb.model import Turn
from mcpdb.node.http.responses import error_parts
from mcpdb.node.internal.messages import WorkOrder
from mcpdb.raft.replication import Replication
from mcpdb.service import ContextService
from mcpdb.store.commands import NO_NAMESPACE
from mcpdb.store.search import SearchQuery

DEFAULT_MAX_TOKENS = 256
# Threads that gather and assemble chats' prompts. A session of thousands of turns takes seconds of
# decoding and tokenizing: on the event loop that stalled every request of the node (/healthz for
# 16 s, measured), and in the loop's default executor six such chats held every thread that searches
# and query embeddings wait for (a lexical search took 23 s). Here they queue among themselves.
PREPARING_THREADS = 2


class ChatFailed(Exception):
    """A request this worker cannot serve; ``status`` says whether another node could (503) or not."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def _error_event(status: int, error: str, message: str) -> dict[str, Any]:
    return {"type": "error", "status": status, "error": error, "message": message}


class ChatWorker:
    def __init__(
        self,
        node_id: str,
        service: ContextService,
        replication: Replication,
        worker: Worker,
        wait_timeout: float,
        memory_budget: int,
        on_first_token: Callable[[float], None] = lambda _: None,
    ) -> None:
        self._on_first_token = on_first_token  # receives each generated reply's time to first token
        self._node_id = node_id
        self._service = service
        self._replication = replication
        self._worker = worker
        self._wait_timeout = wait_timeout
        self._memory_budget = memory_budget
        self._preparing = ThreadPoolExecutor(PREPARING_THREADS, thread_name_prefix="mcpdb-chat-prepare")

    def close(self) -> None:
        """Wait for the prompts being prepared (they read the store, which closes next); drop queued ones."""
        self._preparing.shutdown(wait=True, cancel_futures=True)

    def _max_tokens(self, request: ChatRequest, guardrails: list[dict[str, Any]]) -> int:
        limits = [g["max_output_tokens"] for g in guardrails if g.get("max_output_tokens")]
        return min([request.completion_limit(DEFAULT_MAX_TOKENS), *limits])

    async def _recall_query(self, request: ChatRequest, namespace: str) -> tuple[SearchQuery, str]:
        """The search that ranks the user's memories by the new user message, with its vector where this
        node has a usable embedding model and there is a memory to rank (``ContextService.query_vector``;
        nothing is embedded for no budget); and how it ranks, for the reply to say: ``hybrid``, or
        ``lexical`` and why (``unavailable``, ``skipped``, ``overloaded``, ``no budget``)."""
        asked = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        query = recall_query(asked, None, request.user_id)
        if not (asked and self._memory_budget):
            return query, "lexical: no budget" if asked else "lexical: no user message"
        try:
            vector, state = await self._service.query_vector(namespace, query, asked)
        except Overloaded:  # the model's query queue is full: recall by words rather than refuse the chat
            return query, "lexical: overloaded"
        return dataclasses.replace(query, vector=vector), "hybrid" if vector is not None else f"lexical: {state}"

    async def serve(self, order: WorkOrder) -> AsyncIterator[dict[str, Any]]:
        """Events for one request; never raises for a request-level problem (it becomes an event)."""
        try:
            async for event in self._serve(order):
                yield event
        except ChatFailed as failure:
            yield _error_event(failure.status, failure.error, failure.message)
        except McpdbServerError as error:
            status, code, message, _ = error_parts(error)
            yield _error_event(status, code, message)

    async def _serve(self, order: WorkOrder) -> AsyncIterator[dict[str, Any]]:
        request, worker, store = order.request, self._worker, self._service.store
        began = time.perf_counter()
        if not worker.ready or worker.chat_format is None or worker.tokenizer is None:
            raise ChatFailed(503, "model_loading", f"node {self._node_id} is still loading its model")
        # the chat reads its namespace and state of none (vectors' model): not another tenant's batches
        scope = request.namespace if request.namespace is not None else NO_NAMESPACE
        await self._replication.wait_applied(order.read_index, self._wait_timeout, scope)
        if request.namespace is not None and request.session_id is not None:  # validated: a session has one
            replayed = store.appended_with(request.namespace, request.session_id, order.idempotency_key)
            if replayed is not None:
                for event in self._replay(order, replayed):
                    yield event
                return
        recall, ranked = None, None
        if request.namespace:
            recall, ranked = await self._recall_query(request, request.namespace)
        new_messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            preparing = asyncio.get_running_loop().run_in_executor(
                self._preparing, self._prepare, order, recall, new_messages, worker.chat_format, worker.tokenizer
            )
        except RuntimeError:  # closed: the node is stopping
            raise ChatFailed(503, "node_stopping", f"node {self._node_id} is stopping") from None
        gathered, max_tokens, assembled = await preparing
        stored = gathered.stored if gathered else None
        # Waiting for the read index, embedding the message and recalling memories come before the
        # model's first token: the times a client is told count them (``prepared_s`` says how much).
        prepared_s = time.perf_counter() - began
        generation = Generation()
        async for item in worker.generate(
            assembled.tokens,
            max_tokens=max_tokens,
            temperature=request.temperature,
            stop=request.stop_list() + worker.chat_format.stop,
            seed=order.seed,
            session=request.session_key(),
        ):
            if isinstance(item, Generation):
                generation = item
            else:
                yield {"type": "delta", "text": item}
        ttft_s = None if generation.ttft_s is None else prepared_s + generation.ttft_s
        if ttft_s is not None:
            self._on_first_token(ttft_s)
        done: dict[str, Any] = {
            "type": "done",
            "node": self._node_id,
            "model": worker.settings.model_name,
            "text": generation.text,
            "finish_reason": generation.finish_reason,
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "cached_tokens": generation.cached_tokens,
            },
            "ttft_s": ttft_s,
            "prepared_s": prepared_s,
            "queued_s": generation.queued_s,
            "seconds": prepared_s + generation.seconds,
            "read_index": order.read_index,
            "context_index": gathered.context_index if gathered else None,
            "context_turns": len(stored.turns) if stored else 0,
            "omitted": assembled.omitted,
            "memories": assembled.memories,
            "earlier_turns": assembled.earlier_turns,
            "recall": ranked,  # how the memories were ranked: "hybrid", or "lexical: <why>"
            "replayed": False,
        }
        if request.session_id is not None:
            done.update(await self._record(order, generation, done, assembled))
        yield done

    def _prepare(
        self,
        order: WorkOrder,
        recall: SearchQuery | None,
        new_messages: list[dict[str, str]],
        chat_format: ChatFormat,
        tokenizer: Tokenizer,
    ) -> tuple[Gathered | None, int, Assembled]:
        """A preparing thread's job: the stored contexts (``recall`` ranks the memories), the reply's
        token limit their guardrails allow, and the prompt assembled within the model's window."""
        request = order.request
        gathered = None
        if request.namespace is not None and recall is not None:
            gathered = gather(
                self._service.store,
                request.namespace,
                applied_at_least=order.read_index,
                session_id=request.session_id,
                user_id=request.user_id,
                task_id=request.task_id,
                recall=recall,
            )
        stored = gathered.stored if gathered else StoredContext()
        max_tokens = self._max_tokens(request, stored.guardrails)
        assembled = assemble(
            stored,
            new_messages,
            chat_format,
            tokenizer,
            budget=self._worker.settings.n_ctx - max_tokens,
            memory_budget=self._memory_budget,
            window=self._worker.settings.n_ctx,
        )
        return gathered, max_tokens, assembled

    async def _record(
        self, order: WorkOrder, generation: Generation, done: dict[str, Any], assembled: Assembled
    ) -> dict[str, Any]:
        """Append the new messages and the reply once; a concurrent attempt's append wins if first."""
        request = order.request
        namespace, session_id = request.namespace, request.session_id
        assert namespace is not None and session_id is not None, "only a request with a session is recorded"
        # What the reply was generated from, kept with the turns: the jepsen chat checker verifies
        # that every turn acknowledged before this request began is within context_turns.
        provenance = {
            "idempotency_key": order.idempotency_key,
            "read_index": order.read_index,
            "context_index": done["context_index"],
            "context_turns": done["context_turns"],
        }
        kept = [m for m in request.messages if m.role != "system"]
        last_user = max((i for i, m in enumerate(kept) if m.role == "user"), default=None)
        # The last user message keeps what was recalled for it, so that the next turn's prompt renders
        # it exactly as this one did (the KV cache's prefix) and does not recall the same memories twice.
        recall = (
            {"recalled": assembled.recalled, "memories": assembled.recalled_ids, "turns": assembled.recalled_turns}
            if assembled.recalled
            else {}
        )
        turns = [
            Turn(role=m.role, content=m.content, metadata={**provenance, **(recall if i == last_user else {})})
            for i, m in enumerate(kept)
        ]
        turns.append(
            Turn(
                role="assistant",
                content=generation.text,
                metadata={
                    **provenance,
                    "node": self._node_id,
                    "model": done["model"],
                    "completion_tokens": generation.completion_tokens,
                },
            )
        )
        result = await self._service.append(namespace, session_id, turns, idempotency_key=order.idempotency_key)
        recorded: dict[str, Any] = {"session_version": result["version"], "turn_count": result["turn_count"]}
        if result["replayed"]:
            stored = self._service.store.appended_with(namespace, session_id, order.idempotency_key)
            recorded.update(replayed=True, text=stored[-1]["content"] if stored else generation.text)
        return recorded

    def _replay(self, order: WorkOrder, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        reply = turns[-1]
        metadata = reply.get("metadata", {})
        return [
            {"type": "delta", "text": reply["content"]},
            {
                "type": "done",
                "node": metadata.get("node", self._node_id),
                "model": metadata.get("model"),
                "text": reply["content"],
                "finish_reason": "stop",
                "usage": {
                    "prompt_tokens": 0,
                    "completion_tokens": metadata.get("completion_tokens", 0),
                    "cached_tokens": 0,
                },
                "ttft_s": None,
                "prepared_s": 0.0,
                "queued_s": 0.0,
                "seconds": 0.0,
                "read_index": order.read_index,
                "context_index": metadata.get("context_index"),
                "omitted": {},
                "memories": recalled_by(turns, "memories"),
                "earlier_turns": recalled_by(turns, "turns"),
                "replayed": True,
            },
        ]
