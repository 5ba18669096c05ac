"""Lexical search (issue 15): BM25 over an index the state machine keeps in the write's own transaction.

- Terms: casefolded words, stopwords dropped, Snowball stems; a posting key parses back to what it holds.
- For random writes, overwrites and deletes of contexts of several kinds and users, the store's ranking
  equals BM25 computed from scratch over the live contexts (the oracle below), for random queries, kinds,
  users and tags; the index and its counters equal what the contexts derive, and survive a rebuild.
- What a search for one user reads does not grow with other users' contexts.
"""

from __future__ import annotations

import itertools
import math
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpdb.model import SEARCHABLE_KINDS
from mcpdb.retrieval import lexical
from mcpdb.retrieval.text import searchable_text
from mcpdb.store import postings
from mcpdb.store.commands import Batch, BatchDelete, BatchPut, Delete, Put
from mcpdb.store.state_machine import ContextStore
from tests.store_helpers import AppliedLog, ctx_records, derived_index_state, index_state, lexical_query

WORDS = ["tea", "coffee", "paris", "london", "hiking", "chess", "piano", "violin", "garden", "river"]
USERS = [None, "u1", "u2"]


def test_terms_are_casefolded_words_without_stopwords_or_overlong_words_stemmed() -> None:
    assert lexical.terms("The runners were RUNNING to Paris, and it's raining!") == [
        "runner",
        "run",
        "pari",
        "s",
        "rain",
    ]
    assert lexical.terms("über Café") == ["über", "café"]
    assert lexical.query_terms("tea, TEA and more tea") == ["tea", "more"]
    assert lexical.terms("x" * 33 + " " + "z" * 32) == ["z" * 32]  # longer words are not terms


@given(st.text(alphabet=st.characters(max_codepoint=127)), st.text())
def test_ascii_text_splits_into_the_words_the_unicode_pattern_finds(ascii_text: str, any_text: str) -> None:
    """The ASCII fast path finds exactly the words the general pattern finds (every replica, whatever
    path its texts take, indexes the same terms)."""
    for text in (ascii_text, any_text, ascii_text + any_text):
        assert lexical.words(text) == lexical._WORD.findall(text.casefold())


def test_a_contexts_term_list_and_block_parse_back() -> None:
    for owner in (lexical.NOBODY, b"u" + bytes(range(32))):  # a digest may hold NULs
        context = postings.posted(b"ns", owner, "memory", b"m-1", {"facts": ["tea tea über"], "tags": []})
        assert context == postings.Posted(b"ns", owner, "memory", b"m-1", (("tea", 2), ("über", 1)), 3)
        writer = postings.PostingsWriter()
        with tempfile.TemporaryDirectory() as directory, lmdb.open(directory, max_dbs=2) as env:
            dbs = {name: env.open_db(name) for name in (b"terms", b"lexical")}
            with env.begin(write=True) as txn:
                writer.add(txn, dbs, 7, context)
                writer.flush(txn, dbs)
                [(key, value)] = list(txn.cursor(db=dbs[b"terms"]))
                assert key == postings.owned_key(b"ns", owner, "memory", b"m-1")
                assert postings.parse_term_list(value) == (7, 3, [("tea", 2), ("über", 1)])
                blocks = [
                    (bytes(key), list(postings.parse_block(value))) for key, value in txn.cursor(db=dbs[b"lexical"])
                ]
                assert [postings_of for _, postings_of in blocks] == [[(b"m-1", 2, 3)], [(b"m-1", 1, 3)]]
                assert blocks[0][0] == b"ns\x00tea\x00" + owner[:1] + b"\x00memory\x00" + (7).to_bytes(8, "big")
                writer.remove(txn, dbs, context)
                assert txn.stat(dbs[b"lexical"])["entries"] == 2, "a block is rewritten once, as its entry ends"
                writer.flush(txn, dbs)
                assert txn.stat(dbs[b"terms"])["entries"] == txn.stat(dbs[b"lexical"])["entries"] == 0


@given(
    st.dictionaries(st.binary(min_size=1, max_size=12), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))),
    st.sets(st.binary(min_size=1, max_size=12)),
)
def test_a_block_without_some_contexts_is_the_block_of_the_others(
    held: dict[bytes, tuple[int, int]], removed: set[bytes]
) -> None:
    """A block is rewritten by slicing around the removed contexts' postings (ids of any bytes, one
    another's prefixes, absent ones): exactly what packing the others gives."""
    removed |= set(list(held)[::2])
    kept = {context_id: posting for context_id, posting in held.items() if context_id not in removed}
    assert postings._without(postings._pack_block(held), removed) == postings._pack_block(kept)


def _memory(words: list[str], user: str | None, tags: list[str]) -> dict[str, Any]:
    return {"kind": "memory", "facts": [" ".join(words)], "user_id": user, "tags": tags, "data": {}}


def _task(words: list[str]) -> dict[str, Any]:
    return {"kind": "task", "domain": "home", "goal": " ".join(words) or "-", "status": "open", "data": {}}


def _profile(words: list[str]) -> dict[str, Any]:
    return {"kind": "profile", "name": " ".join(words), "preferences": {}, "goals": [], "data": {}}


TEXT = st.lists(st.sampled_from(WORDS), max_size=6)
CONTEXT = st.one_of(
    st.builds(_memory, TEXT, st.sampled_from(USERS), st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True)),
    st.builds(_task, TEXT),
    st.builds(
        lambda words: {"kind": "profile", "name": " ".join(words), "preferences": {}, "goals": [], "data": {}}, TEXT
    ),
)
ONE_OP = st.one_of(
    st.tuples(st.just("put"), st.sampled_from([f"c{n}" for n in range(8)] + ["u1", "u2"]), CONTEXT),
    st.tuples(st.just("delete"), st.sampled_from([f"c{n}" for n in range(8)]), st.none()),
)
# A batch's contexts share their entry's postings blocks: one may be overwritten or deleted by a later
# operation of the same batch (taken out of the blocks being gathered) or of a later entry (out of a
# block already written).
OPS = st.lists(
    st.one_of(ONE_OP, st.tuples(st.just("batch"), st.none(), st.lists(ONE_OP, min_size=1, max_size=6))), max_size=30
)
QUERY = st.lists(st.sampled_from(WORDS + ["the", "unknown"]), min_size=1, max_size=4)


def _owner(context_id: str, record: dict[str, Any]) -> str | None:
    if record["kind"] == "profile":
        return context_id
    return record["fields"].get("user_id") if record["kind"] == "memory" else None


def _bm25_from_scratch(
    stored: dict[bytes, dict[str, Any]],
    namespace: str,
    query: list[str],
    kinds: tuple[str, ...],
    user_ids: list[str | None] | None,
    tags: list[str],
    limit: int,
) -> list[tuple[float, str]]:
    """The oracle: BM25 over the live contexts a search may return, from their records alone."""
    docs: dict[str, tuple[Counter[str], int, dict[str, Any]]] = {}
    for key, record in stored.items():
        ns, raw_id = key.split(b"\x00", 1)
        context_id = raw_id.decode()
        if ns != namespace.encode() or record["kind"] not in kinds:
            continue
        if user_ids is not None and _owner(context_id, record) not in user_ids:
            continue
        counts = Counter(
            term for text in searchable_text(record["kind"], record["fields"]) for term in lexical.terms(text)
        )
        if counts:
            docs[context_id] = (counts, sum(counts.values()), record)
    average = sum(length for _, length, _ in docs.values()) / len(docs) if docs else 0.0
    scores: dict[str, float] = {}
    for term in query:
        matching = [(cid, counts[term], length) for cid, (counts, length, _) in docs.items() if term in counts]
        weight = lexical.idf(len(docs), len(matching))
        for cid, count, length in matching:
            scores[cid] = scores.get(cid, 0.0) + lexical.term_score(weight, count, length, average)
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0].encode()))
    kept = [(score, cid) for cid, score in ranked if set(tags) <= set(docs[cid][2]["fields"].get("tags", []))]
    return kept[:limit]


@settings(max_examples=60, deadline=None)
@given(
    ops=OPS,
    query=QUERY,
    kind=st.sampled_from([None, "memory", "task", "profile"]),
    user=st.sampled_from(["anyone", None, "u1", "u2"]),
    tags=st.lists(st.sampled_from(["a", "b"]), max_size=1),
    limit=st.integers(1, 5),
)
def test_the_ranking_is_bm25_over_the_live_contexts(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, Any, Any]],
    query: list[str],
    kind: str | None,
    user: str | None,
    tags: list[str],
    limit: int,
) -> None:
    log = AppliedLog(str(tmp_path_factory.mktemp("search") / "store"))
    try:
        for op, context_id, context in ops:
            if op == "put":
                log.apply(Put("app", context_id, context, None, None, float(log.index)))
            elif op == "delete":
                log.apply(Delete("app", context_id, None))
            else:
                batched = tuple(
                    BatchPut(one_id, one, None, None) if one_op == "put" else BatchDelete(one_id, None)
                    for one_op, one_id, one in context
                )
                log.apply(Batch("app", batched, float(log.index)))
        log.apply(Put("other", "c0", _memory(WORDS, None, []), None, None, 0.0))  # another namespace: never counted
        terms = lexical.query_terms(" ".join(query))
        kinds = (kind,) if kind else SEARCHABLE_KINDS
        user_ids = None if user == "anyone" else [user, None]
        found = log.store.search("app", lexical_query(terms, kinds, user_ids, tags, limit))
        expected = _bm25_from_scratch(ctx_records(log.store), "app", terms, kinds, user_ids, tags, limit)
        assert [(context["id"], score) for score, context in found.hits] == [(cid, score) for score, cid in expected]
        assert all(math.isfinite(score) and score > 0 for score, _ in found.hits)
        assert index_state(log.store) == derived_index_state(ctx_records(log.store))
    finally:
        log.store.close()


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppliedLog]:
    log = AppliedLog(str(tmp_path_factory.mktemp("crowded") / "store"))
    for start in range(0, 20_000, 1000):
        puts = tuple(
            BatchPut(f"o{k}", _memory(["tea", "garden", WORDS[k % len(WORDS)]], f"other-{k}", []), None, None)
            for k in range(start, start + 1000)
        )
        log.apply(Batch("app", puts, 1.0))
    log.apply(Put("app", "mine", _memory(["tea", "piano"], "u1", ["a"]), None, None, 1.0))
    log.apply(Put("app", "general", _memory(["piano", "lessons"], None, []), None, None, 1.0))
    try:
        yield log
    finally:
        log.store.close()


def test_a_users_search_reads_their_postings_not_the_namespaces(crowded: AppliedLog) -> None:
    counted = itertools.count()
    parse_block, terms_held = postings.parse_block, postings._terms_held

    def counting_block(value: bytes) -> Iterator[postings.Posting]:
        for posting in parse_block(value):
            next(counted)
            yield posting

    def counting_list(wanted: re.Pattern[bytes], term_list: bytes) -> list[tuple[bytes, bytes]]:
        next(counted)
        return terms_held(wanted, term_list)

    postings.parse_block, postings._terms_held = counting_block, counting_list  # type: ignore[assignment]
    try:
        found = crowded.store.search("app", lexical_query(["tea", "piano"], SEARCHABLE_KINDS, ["u1", None], [], 5))
    finally:
        postings.parse_block, postings._terms_held = parse_block, terms_held  # type: ignore[assignment]
    assert [context["id"] for _, context in found.hits] == ["mine", "general"]
    assert next(counted) == 2  # mine's term list and general's one posting, of 60,000 postings in the namespace
    assert found.searched == 2
    everyone = crowded.store.search("app", lexical_query(["piano"], SEARCHABLE_KINDS, None, [], 3))
    assert everyone.matched == 2000 + 2 and everyone.searched == 20_002


def test_how_many_a_search_would_look_among_is_read_from_the_counters(crowded: AppliedLog) -> None:
    """What a chat asks before embedding its message: whether its user and nobody hold a memory."""
    store = crowded.store
    assert store.searched("app", lexical_query(["tea"], ("memory",), ["u1", None], [], 5)) == 2
    assert store.searched("app", lexical_query(["tea"], ("memory",), ["nobody-here"], [], 5)) == 0
    assert store.searched("app", lexical_query(["tea"], ("memory",), ["nobody-here", None], [], 5)) == 1
    assert store.searched("elsewhere", lexical_query(["tea"], ("memory",), None, [], 5)) == 0
    assert store.searched("app", lexical_query([], ("memory",), None, [], 5)) == 20_002  # the terms do not matter


def test_tags_narrow_and_a_rebuild_gives_the_same_index(tmp_path: Path) -> None:
    log = AppliedLog(str(tmp_path / "store"))
    log.apply(Put("app", "m1", _memory(["tea"], "u1", ["a"]), None, None, 1.0))
    log.apply(Put("app", "m2", _memory(["tea", "tea"], "u1", []), None, None, 1.0))
    assert [c["id"] for _, c in log.store.search("app", lexical_query(["tea"], ("memory",), None, [], 5)).hits] == [
        "m2",
        "m1",
    ]
    tagged = log.store.search("app", lexical_query(["tea"], ("memory",), None, ["a"], 5))
    assert [c["id"] for _, c in tagged.hits] == ["m1"]
    maintained = index_state(log.store)
    log.store.close()
    reopened = ContextStore(str(tmp_path / "store"))
    assert index_state(reopened) == maintained
    reopened.close()
