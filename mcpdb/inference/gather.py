"""Which stored contexts a chat request uses, read from this node's own replica.

A namespace is one application: every instruction and guardrail in it
applies, except instructions specialised in domains other than the task's.
The profile is the context whose id is the request's ``user_id``; memories
are the namespace's memory contexts that belong to that user or to nobody,
ranked by the search the caller prepared from the new user message (the
most relevant first, those scoring well below the best left out:
assembly recalls as many as fit its memory budget).

Every read is by key or through one of the store's indexes (instructions
and guardrails by kind, memories by owner through the search's term lists
and vectors), so what a chat reads follows
what it uses, not how many other contexts the namespace holds.

The caller has already waited for the replica to apply what of the request's
read index (``applied_at_least``) concerns the chat's namespace (its entries
and those of no namespace; another namespace's may still be applying), so
everything read here is at least that new; ``context_index`` is a lower bound
on the Raft index of the namespace's state the reply was generated from: the
read index, or the index of the last entry the store applied before the first
read if that is newer (the jepsen inference checker verifies it is never below
the read index).
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
# A candidate is recalled if it shares a word with the message, or, by meaning, if its fused score is at
# least RECALL_FLOOR of the best one's and its cosine stands RECALL_STANDOUT standard deviations above
# the mean cosine of every memory the search looked at: the memory budget bounds a recall, relevance
# fills it. The floor alone was relative to the best, so a message that matches nothing ("Hello there")
# still recalled half of a user's 50 memories (an outside probe: 26), as the best of nothing set the
# bar; the standard score asks how far above this user's typical memory a memory stands, whatever the
# model's scale; and at most RECALL_BY_MEANING memories are recalled by meaning (among many memories
# about 2% of any message's cosines stand two deviations out: 15 of 480 for "xyzzy plugh"). Measured on
# ``mcpdb bench retrieval``'s chats (10 users, 80 questions each): the needed fact reached the prompt for
# 0.985 of the questions with 80 memories a user and 0.980 with 480 (the floor alone: 0.995 and 0.988),
# and chit-chat messages ("Hello there, how are you today?", "xyzzy plugh", "thanks!") recalled 0-2
# memories of 80 (2.5 deviations: 0.963 of the facts reached). A shared word is evidence enough on its
# own (a message sharing a common word with many memories recalls them, within the budget): the fusion
# scales each ranking between its best and its worst, so the weakest lexical match scores 0 whatever it
# shares.
RECALL_FLOOR = 0.4
RECALL_STANDOUT = 2.0
RECALL_BY_MEANING = 5


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
    """The ranked memories worth recalling: those sharing a word with the message, and those close to the
    best by fused score that stand out by meaning (without a vector ranking, the floor alone)."""
    best = found.hits[0][0] if found.hits else 0.0

    def stands_out(context_id: str) -> bool:
        if found.spread is None:
            return True
        mean, deviation = found.spread
        cosine = found.cosines.get(context_id)
        return cosine is not None and deviation > 0 and (cosine - mean) / deviation >= RECALL_STANDOUT

    chosen: list[dict[str, Any]] = []
    by_meaning = 0
    for score, context in found.hits:
        if context["id"] in found.worded:
            chosen.append(context)
        elif by_meaning < RECALL_BY_MEANING and score >= RECALL_FLOOR * best and stands_out(context["id"]):
            chosen.append(context)
            by_meaning += 1
    return chosen


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
