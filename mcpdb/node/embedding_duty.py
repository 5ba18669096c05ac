"""The leader's embedder: vectors for the contexts whose current version has none, through the log.

A write commits without waiting for its vector (a node without a model still takes memory writes, and
a write is not slower by the embedding's time): the state machine queues every version with text in
``to_embed``, in the write's transaction. This duty, on the leader with a loaded embedding model,
takes a batch of one namespace from that queue, embeds it on a worker thread and proposes it as one
``SetVectors`` entry; each replica stores a vector only if its context is still at that version.
Namespaces take turns, a batch each (``ContextStore.pending_embeddings``). The queue is
replicated state, so a new leader carries on where the old one stopped, and a search says how many
searched contexts have no vector yet.

Embedding is background work: it yields to the node's chats (both share the same two cores, and a
chat's tokens/s is what a serving node is measured by), so it runs while the node generates nothing,
or one round per ``MAX_YIELD_S`` under continuous chat load, so vectors still arrive; until then the
search is lexical for what has none and says how many.

Vectors are written in log format version 2, so the duty waits until every registered node says it
reads it (``formats`` in its registry entry): a node of the previous release would stop at the entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mcpdb.raft.replication import Replication
from mcpdb.retrieval import vectors
from mcpdb.retrieval.embedding import Embedder
from mcpdb.retrieval.text import embedding_text
from mcpdb.service import ContextService
from mcpdb.store.commands import SET_VECTORS_VERSION, Embedded, SetVectors
from mcpdb.store.state_machine import ContextStore

_log = logging.getLogger(__name__)

BATCH = 16  # contexts per embedding round: a SetVectors entry of ~30 KB
IDLE_S = 0.5  # the longest an empty queue goes unlooked at (a commit wakes the duty sooner)
BACKOFF_S = 5.0  # after a round that failed
MAX_YIELD_S = 30.0  # the longest the queue waits for the chats to pause


async def _until(commit: asyncio.Future[None] | None) -> None:
    """Until ``commit`` (the next commit: a write may have queued a context) or ``IDLE_S``, whichever first."""
    if commit is None:
        await asyncio.sleep(IDLE_S)
    else:
        await asyncio.wait([commit], timeout=IDLE_S)


class EmbeddingDuty:
    """Runs on every node; acts only as leader, with a model, in a cluster that reads vectors."""

    def __init__(
        self,
        store: ContextStore,
        replication: Replication,
        service: ContextService,
        embedder: Callable[[], Embedder | None],
        chats_idle: Callable[[], bool] = lambda: True,
        next_commit: Callable[[], asyncio.Future[None]] | None = None,
    ) -> None:
        self._store = store
        self._replication = replication
        self._service = service
        self._embedder = embedder
        self._chats_idle = chats_idle
        self._next_commit = next_commit  # ``ChangeFeed.next_commit``: an empty queue waits for a write, not a timer
        self._yielding_since: float | None = None
        self._served_last = ""  # the namespace the last round embedded for: the next round serves the next one
        self.embedded = 0  # vectors this node proposed that were stored

    def _cluster_reads_vectors(self) -> bool:
        nodes = self._store.nodes()
        return bool(nodes) and all(node.get("formats", 1) >= SET_VECTORS_VERSION for node in nodes)

    async def run(self) -> None:
        while True:
            embedder = self._embedder()
            if (
                embedder is None
                or not self._replication.is_leader()
                or not self._cluster_reads_vectors()
                or self._yields_to_chats()
            ):
                await asyncio.sleep(IDLE_S)
                continue
            commit = self._next_commit() if self._next_commit is not None else None  # before the queue is read
            try:
                stored = await self.round(embedder)
                if not stored:
                    await _until(commit)
            except Exception as error:  # noqa: BLE001 - the duty must outlive any one round (it is the only one)
                _log.warning("embedding round failed (%s); retrying in %.0f s", error, BACKOFF_S)
                await asyncio.sleep(BACKOFF_S)
            finally:
                if commit is not None:
                    commit.cancel()

    def _yields_to_chats(self) -> bool:
        """Whether to wait for the chats: while they run, up to ``MAX_YIELD_S`` at a time."""
        now = time.monotonic()
        if self._chats_idle():
            self._yielding_since = None
            return False
        if self._yielding_since is None:
            self._yielding_since = now
        if now - self._yielding_since < MAX_YIELD_S:
            return True
        self._yielding_since = now
        return False

    async def round(self, embedder: Embedder) -> int:
        """Embed one batch of the queue and propose it; how many vectors were stored."""
        pending = await asyncio.to_thread(self._store.pending_embeddings, BATCH, self._served_last)
        if not pending:
            return 0
        namespace = self._served_last = pending[0][0]
        blobs = await asyncio.to_thread(
            embedder.embed, [embedding_text(kind, fields) for _, _, _, kind, fields in pending]
        )
        embedded = tuple(
            Embedded(context_id, version, vectors.to_text(blob))
            for (_, context_id, version, _, _), blob in zip(pending, blobs, strict=True)
        )
        result = await self._service.set_vectors(SetVectors(namespace, embedded, embedder.model))
        stored = int(result.get("stored", 0))
        self.embedded += stored
        return stored
