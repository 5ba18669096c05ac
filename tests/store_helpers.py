"""The store's secondary indexes as the tests read them: what it holds, and what its contexts derive."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from mcpdb.retrieval import lexical
from mcpdb.store import postings
from mcpdb.store.commands import Command
from mcpdb.store.search import SearchQuery
from mcpdb.store.state_machine import ContextStore, _index_entries

INDEXES = (b"by_kind",)  # held as keys; the lexical index is compared by what it holds (``_lexical_state``)


class AppliedLog:
    """A store and the next Raft index to apply at: commands applied as the Raft thread would."""

    def __init__(self, directory: str, **store_options: Any) -> None:
        self.store = ContextStore(directory, **store_options)
        self.index = 0

    def apply(self, command: Command) -> None:
        self.index += 1
        self.store.apply(self.index, command)


def _lexical_state(txn: Any, dbs: dict[bytes, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """The lexical index as its two databases hold it, in a form that does not depend on which entries
    wrote which block: every term list, and every block's postings without its block. Checks on the
    way that each posting sits in the block its context's term list names, once."""
    lists, listed = [], []
    for key, value in txn.cursor(db=dbs[b"terms"]):
        namespace, rest = bytes(key).split(b"\x00", 1)
        owner, kind, context_id = lexical.split_owned(rest)
        block, length, counts = postings.parse_term_list(value)
        lists.append((namespace, owner, kind, context_id, tuple(counts), length))
        listed += [
            (namespace, term.encode(), owner[:1], kind, context_id, count, length, block) for term, count in counts
        ]
    held = []
    for key, value in txn.cursor(db=dbs[b"lexical"]):
        namespace, term, owner_class, kind, _ = bytes(key[:-8]).split(b"\x00")
        block = int.from_bytes(key[-8:], "big")
        held += [(namespace, term, owner_class, kind, *posting, block) for posting in postings.parse_block(value)]
    assert sorted(held) == sorted(listed), "the blocks and the term lists disagree"
    return {"term_lists": lists, "postings": sorted(posting[:-1] for posting in held)}


def index_state(store: ContextStore) -> dict[str, Any]:
    """The keys of every index in key order, what the lexical index holds, the per-kind counts and the
    lexical counters, as the store holds them."""
    generation = store._generation
    with generation.env.begin() as txn:
        state: dict[str, Any] = {
            name.decode(): [key for key, _ in txn.cursor(db=generation.dbs[name])] for name in INDEXES
        }
        state.update(_lexical_state(txn, generation.dbs))
        state["lexical_counts"] = {
            key: lexical.unpack_counter(value)
            for key, value in txn.cursor(db=generation.dbs[b"meta"])
            if key.startswith(lexical.COUNTER_PREFIX)
        }
    state["counts"] = store.count_by_kind()
    return state


def derived_index_state(stored: dict[bytes, dict[str, Any]]) -> dict[str, Any]:
    """What ``index_state`` must be for contexts ``stored`` (ctx key -> record as ctx holds it)."""
    derived = [_index_entries(key, record) for key, record in stored.items()]
    entries = [entry for pairs, _, _ in derived for entry in pairs]
    state: dict[str, Any] = {name.decode(): sorted(key for index, key in entries if index == name) for name in INDEXES}
    posted = sorted(
        (
            (c.namespace, c.owner, c.kind.encode(), c.context_id, c.counts, c.length)
            for _, _, c in derived
            if c is not None
        ),
        key=lambda item: postings.owned_key(item[0], item[1], item[2].decode(), item[3]),
    )
    state["term_lists"] = posted
    state["postings"] = sorted(
        (namespace, term.encode(), owner[:1], kind, context_id, count, length)
        for namespace, owner, kind, context_id, counts, length in posted
        for term, count in counts
    )
    lexical_counts: dict[bytes, tuple[int, int]] = {}
    for _, counted, _ in derived:
        for counter, length in counted:
            held, total = lexical_counts.get(counter, (0, 0))
            lexical_counts[counter] = (held + 1, total + length)
    state["lexical_counts"] = lexical_counts
    state["counts"] = dict(Counter(record["kind"] for record in stored.values()))
    return state


def ctx_records(store: ContextStore) -> dict[bytes, dict[str, Any]]:
    """Every context as ctx holds it, by ctx key."""
    generation = store._generation
    with generation.env.begin(db=generation.dbs[b"ctx"]) as txn:
        return {key: orjson.loads(value) for key, value in txn.cursor()}


def lexical_query(
    terms: list[str], kinds: tuple[str, ...], user_ids: list[str | None] | None, tags: list[str], limit: int
) -> SearchQuery:
    """A lexical search among the contexts of ``kinds`` of ``user_ids`` (None: anyone's)."""
    owners = None if user_ids is None else ContextStore.owners_of(user_ids)
    return SearchQuery(terms, None, "lexical", kinds, owners, tags, limit)


def owned_memories(store: ContextStore, namespace: str, user_ids: list[str | None], term: str) -> list[str]:
    """The ids of the memories of ``user_ids`` (None: nobody's) holding ``term``, in id order, as a chat's
    search finds them through the term lists grouped by owner."""
    query = lexical_query([term], ("memory",), user_ids, [], 100)
    return sorted(context["id"] for _, context in store.search(namespace, query).hits)
