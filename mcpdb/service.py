"""Context operations on top of replication: what REST, MCP and the CLI all call.

Writes become log commands (``mcpdb.store.commands``) carrying the proposer's
clock where applying them needs one; reads go through a
read barrier unless the caller asks for ``stale`` (local state, may lag).
Refusals decided by the state machine (version conflict, missing context)
come back as ``Refused`` with the code the store chose.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from pydantic import BaseModel

from mcpdb.admission import Admission
from mcpdb.auth import ALL_NAMESPACES, Scope, new_token
from mcpdb.errors import ModelNotServed, NotFound, Refused, UnsearchableQuery
from mcpdb.model import SEARCHABLE_KINDS, BatchIn, SearchMode, Turn, check_context_id, check_namespace, context_fields
from mcpdb.raft.barrier import ReadBarrier
from mcpdb.raft.replication import Replication
from mcpdb.retrieval import lexical
from mcpdb.retrieval.embedding import Embedder
from mcpdb.store import commands
from mcpdb.store.search import SearchQuery
from mcpdb.store.state_machine import ContextStore, Page


class Consistency(str, Enum):
    linearizable = "linearizable"
    stale = "stale"


@dataclasses.dataclass(frozen=True)
class Confirmed:
    """A read index a request's token check confirmed after the request arrived, and the namespace
    whose entries (with those of none) it waited for. A read of that namespace in the same request is
    served at it, without a second round to the leader: a read may take effect at any moment between
    its request's arrival and its answer, and the check's moment is one."""

    index: int
    namespace: str


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("ok"):
        return result
    if result["error"] == "not_found":
        raise NotFound(result["message"])
    raise Refused(result["error"], result["message"], result.get("current_version"))


SEARCH_CONCURRENCY = 2  # one per core here
SEARCHES_WAITING = 8  # beyond these a search is refused (503 overloaded): a queue of milliseconds' scans
QUERY_EMBEDDINGS_WAITING = 4  # the model embeds one text at a time, ~10 ms each (up to 0.5 s for 4 KiB)
# A namespace's share of either queue (running and waiting together): one tenant cannot fill it.
SEARCHES_PER_NAMESPACE = 4
QUERY_EMBEDDINGS_PER_NAMESPACE = 2


def search_query(
    text: str,
    vector: bytes | None,
    mode: SearchMode,
    kind: str | None,
    user_id: str | None,
    tags: Sequence[str],
    k: int,
) -> SearchQuery:
    """What a search for ``text`` ranks: with ``user_id``, that user's contexts and nobody's, as a
    chat reads them; every searchable kind unless ``kind``. (The retrieval benchmark asks the same.)"""
    return SearchQuery(
        lexical.query_terms(text),
        vector,
        mode,
        [kind] if kind else SEARCHABLE_KINDS,
        None if user_id is None else ContextStore.owners_of([user_id, None]),
        tags,
        k,
    )


def _unsearchable(query: str, by_words_alone: bool) -> str | None:
    """Why ``query`` cannot match anything (None: it can): it has no word at all, or it is ranked by words
    alone (``by_words_alone``: lexical mode, or hybrid on a node that cannot rank by meaning) and none of
    its words is one the index holds. A vector search of stopwords still means something ("who am I?")."""
    found = lexical.words(query)
    if not found:
        return "the query has no word to search for: give it letters or digits"
    if by_words_alone and not lexical.query_terms(query):
        shown = " ".join(word if len(word) <= 20 else word[:20] + "..." for word in found[:8])  # echo little
        return (
            f"the query's words ({shown}) are stopwords or longer than {lexical.MAX_WORD_CHARS} characters, which "
            "lexical search does not index: use other words, or mode=hybrid or vector on a node with an "
            "embedding model"
        )
    return None


class ContextService:
    """Namespaced context reads and writes with the consistency the caller asked for."""

    def __init__(
        self,
        replication: Replication,
        barrier: ReadBarrier,
        write_timeout: float,
        unsafe_stale_reads: bool = False,
        embedder: Callable[[], Embedder | None] = lambda: None,
    ) -> None:
        self._replication = replication
        self._embedder = embedder  # this node's embedding model once loaded, for queries
        # Searches at once on this node and how many may wait (``mcpdb.admission``): each holds a worker
        # thread and the GIL in stretches, so an unbounded number from one client would starve the others
        # and the Raft thread. Query embeddings queue apart, so a lexical search never waits for the model.
        self._searches = Admission(SEARCH_CONCURRENCY, SEARCHES_WAITING, "searches", SEARCHES_PER_NAMESPACE)
        self._query_embeddings = Admission(
            1, QUERY_EMBEDDINGS_WAITING, "query embeddings", QUERY_EMBEDDINGS_PER_NAMESPACE
        )
        self._barrier = barrier
        self._write_timeout = write_timeout
        # Deliberately broken mode for the fault-injection harness: serve
        # "linearizable" reads from local state. Never use it otherwise.
        self._unsafe_stale_reads = unsafe_stale_reads

    @property
    def store(self) -> ContextStore:
        return self._replication.store

    async def _write(self, command: commands.Command) -> dict[str, Any]:
        return _checked(await self._replication.propose(command, self._write_timeout))

    async def read_index(
        self, consistency: Consistency, namespace: str | None = None, confirmed: Confirmed | None = None
    ) -> int | None:
        """Wait until local state is fresh enough for ``consistency``, for a read of ``namespace``
        alone if one is given (it does not wait behind another namespace's writes); returns the read
        index. ``confirmed``: what this request's token check waited for, reused if it covers it."""
        if consistency is Consistency.stale or self._unsafe_stale_reads:
            return None
        if confirmed is not None and confirmed.namespace == namespace:
            return confirmed.index
        return await self._barrier.wait(namespace)

    async def put(
        self, namespace: str, context_id: str, context: BaseModel, if_version: int | None = None
    ) -> dict[str, Any]:
        check_namespace(namespace)
        check_context_id(context_id)
        result = await self._write(
            commands.Put(
                namespace, context_id, context_fields(context), getattr(context, "ttl", None), if_version, time.time()
            )
        )
        return {"namespace": namespace, "id": context_id, "version": result["version"], "created": result["created"]}

    async def get(
        self,
        namespace: str,
        context_id: str,
        consistency: Consistency = Consistency.linearizable,
        confirmed: Confirmed | None = None,
    ) -> dict[str, Any]:
        check_namespace(namespace)
        check_context_id(context_id)
        await self.read_index(consistency, namespace, confirmed)
        record = self.store.get(namespace, context_id)
        if record is None:
            raise NotFound(f"{namespace}/{context_id} does not exist")
        return record

    async def delete(self, namespace: str, context_id: str, if_version: int | None = None) -> dict[str, Any]:
        check_namespace(namespace)
        check_context_id(context_id)
        result = await self._write(commands.Delete(namespace, context_id, if_version))
        return {"namespace": namespace, "id": context_id, "deleted": True, "version": result["version"]}

    async def list(
        self,
        namespace: str,
        kind: str | None = None,
        prefix: str = "",
        limit: int = 100,
        cursor: str | None = None,
        consistency: Consistency = Consistency.linearizable,
        confirmed: Confirmed | None = None,
    ) -> Page:
        check_namespace(namespace)
        await self.read_index(consistency, namespace, confirmed)
        return self.store.list(namespace, kind=kind, prefix=prefix, limit=limit, cursor=cursor)

    async def search(
        self,
        namespace: str,
        query: str,
        kind: str | None = None,
        user_id: str | None = None,
        tags: builtins.list[str] | None = None,
        k: int = 5,
        mode: SearchMode = "hybrid",
        consistency: Consistency = Consistency.linearizable,
        confirmed: Confirmed | None = None,
    ) -> dict[str, Any]:
        """The ``k`` contexts that best match ``query`` (``mcpdb.store.search`` says how each mode
        ranks), at one read index: a search is as consistent as a GET. With ``user_id``, that user's
        contexts and nobody's, as a chat reads them. The query's vector comes from this node's
        embedding model, if it made the stored vectors: without one a vector search is refused (404
        ``model_not_found``, as a chat for a model no node serves) and a hybrid one is lexical
        (``"vector"`` says why, ``query_vector``). The search runs on a worker thread: scanning a
        common word's postings must not hold up the event loop's other requests."""
        check_namespace(namespace)
        unusable = self._unusable_embedder()
        if (why := _unsearchable(query, mode == "lexical" or (mode == "hybrid" and unusable is not None))) is not None:
            raise UnsearchableQuery(why)
        if mode == "vector" and unusable is not None:
            raise ModelNotServed(f"{unusable} (mode=vector needs it): search with mode=lexical or hybrid")
        asked = search_query(query, None, mode, kind, user_id, tags or [], k)
        read_index = await self.read_index(consistency, namespace, confirmed)
        vector_state = None
        if mode != "lexical":
            # Embedded before a search slot is taken: a lexical search never waits for the model.
            vector, vector_state = await self.query_vector(namespace, asked, query)
            asked = dataclasses.replace(asked, vector=vector)
        async with self._searches.slot(f"namespace {namespace}"):
            found = await asyncio.to_thread(self.store.search, namespace, asked)
            answer: dict[str, Any] = {
                "results": [
                    {"id": context["id"], "kind": context["kind"], "score": score, "context": context}
                    for score, context in found.hits
                ],
                "mode": mode,
                "terms": list(asked.terms),
                "matched": found.matched,
                "searched": found.searched,
                "read_index": read_index,
            }
            if vector_state is not None:
                answer["vector"] = vector_state
                answer["unembedded"] = max(0, found.searched - (found.embedded or 0))
            return answer

    def _unusable_embedder(self) -> str | None:
        """Why this node cannot rank by vectors (None: it can): no model loaded, or not the model the
        store's vectors were made with (cosine across two models means nothing)."""
        embedder = self._embedder()
        if embedder is None:
            return "this node has no embedding model loaded"
        held = self.store.embedding_model()
        if held is not None and held != embedder.model:
            return f"this node embeds with {embedder.model}, the stored vectors are {held}'s"
        return None

    async def query_vector(self, namespace: str, query: SearchQuery, text: str) -> tuple[bytes | None, str]:
        """``text``'s vector for ``query`` from this node's embedding model on a worker thread, ahead of
        the background embedding, and what became of it: ``used``; ``unavailable`` (no usable model,
        ``_unusable_embedder``); ``skipped`` (nothing in scope to rank: the embedding is a chat's
        costliest step before its first token, and ~10 ms of a search). Overloaded when
        ``QUERY_EMBEDDINGS_WAITING`` already wait. A query's vector, unlike a context's, is never
        stored: it ranks one search and is gone."""
        embedder = self._embedder()
        if embedder is None or self._unusable_embedder() is not None:
            return None, "unavailable"
        if not self.store.searched(namespace, query):
            return None, "skipped"
        async with self._query_embeddings.slot(f"namespace {namespace}"):
            return await asyncio.to_thread(embedder.embed_query, text), "used"

    async def set_vectors(self, command: commands.SetVectors) -> dict[str, Any]:
        """Propose vectors the leader's embedder computed (see ``mcpdb.node.embedding_duty``)."""
        return await self._write(command)

    async def append(
        self,
        namespace: str,
        session_id: str,
        turns: builtins.list[Turn],
        if_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Append turns to a session (created if missing) atomically, in order.

        With an idempotency key, a retry of an append that already committed
        returns the first result instead of appending again.
        """
        check_namespace(namespace)
        check_context_id(session_id)
        result = await self._write(
            commands.Append(
                namespace,
                session_id,
                tuple(turn.model_dump(mode="json") for turn in turns),
                if_version,
                idempotency_key,
                time.time(),
            )
        )
        return {
            "namespace": namespace,
            "id": session_id,
            "version": result["version"],
            "turn_count": result["turn_count"],
            "first_seq": result["first_seq"],
            "replayed": result.get("replayed", False),
        }

    async def batch(self, namespace: str, batch: BatchIn) -> dict[str, Any]:
        check_namespace(namespace)
        ops: list[commands.BatchPut | commands.BatchDelete] = []
        for op in batch.ops:
            check_context_id(op.id)
            if op.op == "put":
                ops.append(commands.BatchPut(op.id, context_fields(op.context), op.context.ttl, op.if_version))
            else:
                ops.append(commands.BatchDelete(op.id, op.if_version))
        result = await self._write(commands.Batch(namespace, tuple(ops), time.time()))
        return {"namespace": namespace, "version": result["version"], "results": result["results"]}

    async def expire_due(self, limit: int = 1000) -> int:
        """Leader duty: propose the expiry of contexts whose TTL ran out (by the leader's clock)."""
        now = time.time()
        due = self.store.expired(now, limit)
        if not due:
            return 0
        result = await self._write(commands.Expire(tuple(due), now))
        return int(result["expired"])

    async def create_token(
        self, scopes: dict[str, Scope], description: str, rate_limit: float | None = None
    ) -> dict[str, Any]:
        """Mint a scoped token; the secret is in the answer only, the store keeps its hash."""
        for namespace in scopes:
            if namespace != ALL_NAMESPACES:
                check_namespace(namespace)
        token, token_id, digest = new_token()
        stored = commands.TokenSpec(
            token_id, digest, description, rate_limit, {namespace: scope.value for namespace, scope in scopes.items()}
        )
        result = await self._write(commands.CreateToken(stored, time.time()))
        return {
            "token": token,
            "id": token_id,
            "scopes": stored.scopes,
            "description": description,
            "rate_limit": rate_limit,
            "version": result["version"],
        }

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        result = await self._write(commands.RevokeToken(token_id))
        return {"id": token_id, "revoked": True, "version": result["version"]}

    async def register_node(self, node: dict[str, Any]) -> None:
        await self._write(commands.RegisterNode(node))

    async def deregister_node(self, node_id: str) -> None:
        await self._write(commands.DeregisterNode(node_id))
