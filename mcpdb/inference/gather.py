"""Which stored contexts a chat request uses, read from this node's own replica.

A namespace is one application: every instruction and guardrail in it
applies, except instructions specialised in domains other than the task's.
The profile is the context whose id is the request's ``user_id``; memories
are the namespace's memory contexts that belong to that user or to nobody,
ranked by the search the caller prepared from the new user message (the
most relevant first, those scoring well below the best left out:
assembly recalls as many as fit its memory budget).

Every read is by key or through one of the store's indexes (instructions
and guardrails by kind, memories by owner through the search's postings
and vectors), so what a chat reads follows
what it uses, not how many other contexts the namespace holds.

The caller has already waited for the replica to apply the request's read
index (``applied_at_least``), so everything read here is at least that new;
``context_index`` is a lower bound on the Raft index of the state the reply
was generated from: the read index, or the index of the last entry the store
applied before the first read if that is newer (the jepsen inference checker
verifies it is never below the read index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcpdb.errors import NotFound, Refused
from mcpdb.inference.assembly import StoredContext
from mcpdb.retrieval import lexical
from mcpdb.store.search import SearchHits, SearchQuery
from mcpdb.store.state_machine import ContextStore


@dataclass(frozen=True)
class Gathered:
    stored: StoredContext
    context_index: int


RECALL_CANDIDATES = 32  # memories ranked per chat; the memory budget takes the best that fit
# A candidate is recalled if it shares a word with the message, or if its fused score is at least this
# share of the best one's: the memory budget bounds a recall, relevance fills it. Measured by ``mcpdb
# bench retrieval``'s chats (users holding 480 memories, 800 questions): with the budget alone a chat
# recalled ~25 memories; with this floor ~5, and the fact the question needed reached the prompt as
# often (0.988; a floor of 0.5: 0.979, 0.6: 0.960). Fewer, better lines are fewer prompt tokens, and
# a follow-up whose best memories the last turn already recalled adds almost none, so the KV cache
# keeps nearly all of its prompt. A shared word is evidence enough on its own: the fusion scales each
# ranking between its best and its worst, so the weakest lexical match scores 0 whatever it shares
# (without a vector ranking, the floor would drop every match but the best).
RECALL_FLOOR = 0.4


def recall_query(
    message: str, vector: bytes | None, user_id: str | None, limit: int = RECALL_CANDIDATES
) -> SearchQuery:
    """The search that ranks a chat's memories by its new user ``message``: hybrid (lexical where
    ``vector`` is None), among the memories of ``user_id`` and of nobody (of nobody alone without a user,
    unlike the search API, where no user means anyone's)."""
    return SearchQuery(
        lexical.query_terms(message), vector, "hybrid", ["memory"], ContextStore.owners_of([user_id, None]), [], limit
    )


def _every(store: ContextStore, namespace: str, kind: str) -> list[dict[str, Any]]:
    """The namespace's contexts of ``kind`` in id order (listing by kind reads the kind's index)."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = store.list(namespace, kind=kind, limit=1000, cursor=cursor)
        found += page.items
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def _of_kind(record: dict[str, Any] | None, kind: str, what: str) -> dict[str, Any] | None:
    if record is not None and record["kind"] != kind:
        raise Refused(
            "wrong_kind", f"{record['namespace']}/{record['id']} is a {record['kind']}, not a {kind} ({what})"
        )
    return record


def _relevant(found: SearchHits) -> list[dict[str, Any]]:
    """The ranked memories worth recalling: those sharing a word with the message or scoring at least
    ``RECALL_FLOOR`` of the best."""
    best = found.hits[0][0] if found.hits else 0.0
    return [context for score, context in found.hits if score >= RECALL_FLOOR * best or context["id"] in found.worded]


def gather(
    store: ContextStore,
    namespace: str,
    *,
    applied_at_least: int,
    session_id: str | None,
    user_id: str | None,
    task_id: str | None,
    recall: SearchQuery,
) -> Gathered:
    context_index = max(applied_at_least, store.applied_index())
    task = None
    if task_id is not None:
        task = _of_kind(store.get(namespace, task_id), "task", "task_id")
        if task is None:
            raise NotFound(f"task {namespace}/{task_id} does not exist")
    domain = task["domain"] if task else None
    instructions = [
        i
        for i in _every(store, namespace, "instruction")
        if domain is None or not i.get("domains") or domain in i["domains"]
    ]
    profile = _of_kind(store.get(namespace, user_id), "profile", "user_id") if user_id else None
    recalled = store.search(namespace, recall)
    session = _of_kind(store.get(namespace, session_id), "session", "session_id") if session_id else None
    stored = StoredContext(
        instructions=instructions,
        guardrails=_every(store, namespace, "guardrail"),
        task=task,
        profile=profile,
        memories=_relevant(recalled),
        memories_held=recalled.searched,
        turns=session["turns"] if session else [],
    )
    return Gathered(stored, context_index)
