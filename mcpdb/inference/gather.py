"""Which stored contexts a chat request uses, read from this node's own replica.

A namespace is one application: every instruction and guardrail in it
applies, except instructions specialised in domains other than the task's.
The profile is the context whose id is the request's ``user_id``; memories
are the namespace's memory contexts that belong to that user or to nobody,
ranked by the search the caller prepared from the new user message (the
most relevant first: assembly recalls as many as fit its memory budget).

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
from mcpdb.store.search import SearchQuery
from mcpdb.store.state_machine import ContextStore


@dataclass(frozen=True)
class Gathered:
    stored: StoredContext
    context_index: int


RECALL_CANDIDATES = 32  # memories ranked per chat; the memory budget takes the best that fit


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
        memories=[context for _, context in recalled.hits],
        memories_held=recalled.searched,
        turns=session["turns"] if session else [],
    )
    return Gathered(stored, context_index)
