"""A chat reads what it needs (issue 14, item 3).

- gather, reading through the store's indexes, returns exactly what the full scan of the namespace it
  replaced returned (kept here as the oracle), for random namespaces, users, sessions and tasks,
  wrong kinds and missing contexts included; listing by kind pages as the filtered full listing did.
- What gather reads (LMDB records: gets, cursor positions, cursor steps) does not grow with other
  users' memories or other contexts in the namespace.
- A store written before the indexes, or applied to by a release without them, builds them from its
  contexts when opened; a rewrite the shortcut skips (same kind, owner and text) would have changed no
  entry.
- Of the ranked memories, a chat recalls those that share a word with its message, or score near the
  best (``RECALL_FLOOR``) and stand out from the typical memory by cosine (``RECALL_STANDOUT``), in rank
  order.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpdb.errors import NotFound
from mcpdb.inference.assembly import StoredContext
from mcpdb.inference.gather import RECALL_FLOOR, RECALL_STANDOUT, _of_kind, _relevant, gather, recall_query
from mcpdb.store.commands import Append, Batch, BatchPut, Delete, Put
from mcpdb.store.search import SearchHits
from mcpdb.store.state_machine import (
    _APPLIED,
    _INDEX_FORMAT,
    _KIND_COUNT,
    _U64,
    ContextStore,
    _index_entries,
    _key,
    _same_index_input,
)
from tests.store_helpers import AppliedLog, ctx_records, derived_index_state, index_state, owned_memories

USERS = [None, "u1", "u2", ""]
DOMAINS = ["legal", "maths"]
INSTRUCTION = st.builds(
    lambda domains: {"kind": "instruction", "role": "tutor", "domains": domains, "text": "Be clear.", "data": {}},
    st.lists(st.sampled_from(DOMAINS), max_size=2, unique=True),
)
GUARDRAIL = st.just({"kind": "guardrail", "rules": ["be kind"], "deny_topics": [], "data": {}})
MEMORY = st.builds(
    lambda user: {"kind": "memory", "facts": ["likes tea"], "user_id": user, "tags": [], "data": {}},
    st.sampled_from(USERS),
)
PROFILE = st.just({"kind": "profile", "name": "Ada", "preferences": {}, "goals": [], "data": {}})
SESSION = st.builds(
    lambda user: {"kind": "session", "user_id": user, "turns": [{"role": "user", "content": "hi"}], "data": {}},
    st.sampled_from(USERS),
)
TASK = st.builds(
    lambda domain: {"kind": "task", "domain": domain, "goal": "done", "status": "open", "data": {}},
    st.sampled_from(DOMAINS),
)
# Each kind mostly under the ids a request names it by; now and then a context of another kind there.
BY_ID = {"i1": INSTRUCTION, "i2": INSTRUCTION, "g1": GUARDRAIL} | {f"m{n}": MEMORY for n in range(1, 6)}
BY_ID |= {"u1": PROFILE, "u2": PROFILE, "s1": SESSION, "t1": TASK}
ANY = st.one_of(INSTRUCTION, GUARDRAIL, MEMORY, PROFILE, SESSION, TASK)
OPS = st.lists(
    st.one_of(
        *(st.tuples(st.just("put"), st.just(context_id), kind) for context_id, kind in BY_ID.items()),
        st.tuples(st.just("put"), st.sampled_from(list(BY_ID)), ANY),
        st.tuples(st.just("delete"), st.sampled_from(list(BY_ID)), st.none()),
        st.tuples(st.just("append"), st.sampled_from(["s1", "s2"]), st.none()),
    ),
    max_size=25,
)


class _Log(AppliedLog):
    """A store and the next Raft index to apply at, with the writes these tests make."""

    def apply_ops(self, namespace: str, ops: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        for op, context_id, context in ops:
            if op == "put":
                assert context is not None
                self.apply(Put(namespace, context_id, context, None, None, float(self.index)))
            elif op == "delete":
                self.apply(Delete(namespace, context_id, None))
            else:
                self.apply(Append(namespace, context_id, ({"role": "user", "content": "more"},), None, None, 1.0))

    def load_others(self, namespace: str, count: int, first: int = 0) -> None:
        """``count`` contexts gather never needs, numbered from ``first``: other users' memories, and tasks."""
        for start in range(first, first + count, 1000):
            ops = []
            for k in range(start, min(start + 1000, first + count)):
                context = (
                    {"kind": "memory", "facts": ["f"], "user_id": f"other-{k}", "tags": [], "data": {}}
                    if k % 10
                    else {"kind": "task", "domain": "legal", "goal": "g", "status": "open", "data": {}}
                )
                ops.append(BatchPut(f"other-{k:06d}", context, None, None))
            self.apply(Batch(namespace, tuple(ops), 1.0))


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Log]:
    """One store for the module's examples, each in a namespace of its own beside a crowded one."""
    log = _Log(str(tmp_path_factory.mktemp("gather") / "store"))
    log.load_others("crowd", 2000)
    log.apply_ops("crowd", [("put", "m1", {"kind": "memory", "facts": ["x"], "user_id": "u1", "data": {}})])
    try:
        yield log
    finally:
        log.store.close()


_NAMESPACES = itertools.count()


def _full_scan_gather(
    store: ContextStore, namespace: str, *, session_id: str | None, user_id: str | None, task_id: str | None
) -> StoredContext:
    """gather before the indexes: one pass over every context of the namespace (the oracle)."""
    found: dict[str, list[dict[str, Any]]] = {"instruction": [], "guardrail": [], "memory": []}
    cursor: str | None = None
    while True:
        page = store.list(namespace, limit=1000, cursor=cursor)
        for item in page.items:
            if item["kind"] in found:
                found[item["kind"]].append(item)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    task = None
    if task_id is not None:
        task = _of_kind(store.get(namespace, task_id), "task", "task_id")
        if task is None:
            raise NotFound(f"task {namespace}/{task_id} does not exist")
    domain = task["domain"] if task else None
    instructions = [i for i in found["instruction"] if domain is None or not i.get("domains") or domain in i["domains"]]
    profile = _of_kind(store.get(namespace, user_id), "profile", "user_id") if user_id else None
    # Every memory says "likes tea": the recall for "tea" ties them all, and a tie goes to the newer.
    memories = sorted(
        (m for m in found["memory"] if m.get("user_id") in (None, user_id)), key=lambda m: (-m["version"], m["id"])
    )
    session = _of_kind(store.get(namespace, session_id), "session", "session_id") if session_id else None
    return StoredContext(
        instructions=instructions,
        guardrails=found["guardrail"],
        task=task,
        profile=profile,
        memories=memories,
        memories_held=len(memories),
        turns=session["turns"] if session else [],
    )


def _outcome(call: Any) -> Any:
    """What a gather returned, or the error it raised (type and message)."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - compared, not handled
        return type(error), str(error)


@settings(max_examples=600, deadline=None)
@given(
    ops=OPS,
    user_id=st.sampled_from([None, "u1", "u2", "", "u3"]),
    session_id=st.sampled_from([None, "s1", "m1"]),
    task_id=st.sampled_from([None, "t1", "u1"]),
)
def test_gather_returns_what_the_full_scan_returned(
    log: _Log,
    ops: list[tuple[str, str, dict[str, Any] | None]],
    user_id: str | None,
    session_id: str | None,
    task_id: str | None,
) -> None:
    namespace = f"n{next(_NAMESPACES)}"
    log.apply_ops(namespace, ops)
    request = {"session_id": session_id, "user_id": user_id, "task_id": task_id}
    recall = recall_query("tea", None, user_id, 100)
    indexed = _outcome(lambda: gather(log.store, namespace, applied_at_least=0, recall=recall, **request).stored)
    assert indexed == _outcome(lambda: _full_scan_gather(log.store, namespace, **request))


@settings(max_examples=100, deadline=None)
@given(
    ops=OPS,
    kind=st.sampled_from(["memory", "instruction", "session", "task"]),
    prefix=st.sampled_from(["", "m", "i1", "x"]),
    limit=st.integers(1, 3),
    cursor=st.sampled_from([None, "", "a", "m1", "m2", "t"]),
)
def test_listing_by_kind_pages_as_the_filtered_full_listing(
    log: _Log,
    ops: list[tuple[str, str, dict[str, Any] | None]],
    kind: str,
    prefix: str,
    limit: int,
    cursor: str | None,
) -> None:
    namespace = f"n{next(_NAMESPACES)}"
    log.apply_ops(namespace, ops)
    every = [item for item in log.store.list(namespace, prefix=prefix, limit=1000).items if item["kind"] == kind]
    after = [item for item in every if cursor is None or item["id"] > cursor]
    page = log.store.list(namespace, kind=kind, prefix=prefix, limit=limit, cursor=cursor)
    assert page.items == after[:limit]
    assert page.next_cursor == (after[limit - 1]["id"] if len(after) > limit else None)


# ------------------------------------------------------------------ what gather reads
class _Reads:
    """Counts the LMDB records read through an environment: a get that finds a value, a cursor
    positioned on a record, a cursor's step to the next one."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def begin(self, **kwargs: Any) -> _CountingTxn:
        return _CountingTxn(self, self.env.begin(**kwargs))


class _CountingTxn:
    def __init__(self, reads: _Reads, txn: lmdb.Transaction) -> None:
        self.reads, self.txn = reads, txn

    def __enter__(self) -> _CountingTxn:
        self.txn.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.txn.__exit__(*exc)

    def get(self, key: bytes, default: Any = None, db: Any = None) -> Any:
        value = self.txn.get(key, default, db=db)
        self.reads.count += value is not default
        return value

    def cursor(self, db: Any = None) -> _CountingCursor:
        return _CountingCursor(self.reads, self.txn.cursor(db=db))


class _CountingCursor:
    def __init__(self, reads: _Reads, cursor: lmdb.Cursor) -> None:
        self.reads, self.cursor = reads, cursor

    def set_range(self, key: bytes) -> bool:
        found = self.cursor.set_range(key)
        self.reads.count += found
        return found

    def __iter__(self) -> Iterator[Any]:
        return self.iternext()

    def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]:
        for item in self.cursor.iternext(keys, values):
            self.reads.count += 1
            yield item


def _gather_counting_reads(store: ContextStore, namespace: str) -> tuple[StoredContext, int]:
    generation = store._generation
    reads = _Reads(generation.env)
    store._generation = dataclasses.replace(generation, env=reads)
    try:
        stored = gather(
            store,
            namespace,
            applied_at_least=0,
            session_id="s1",
            user_id="u1",
            task_id="t1",
            recall=recall_query("tea and opening hours", None, "u1", 32),
        ).stored
    finally:
        store._generation = generation
    return stored, reads.count


def test_what_gather_reads_does_not_grow_with_other_contexts(tmp_path: Path) -> None:
    log = _Log(str(tmp_path / "store"))
    log.apply_ops(
        "app",
        [
            ("put", "i1", {"kind": "instruction", "role": "tutor", "domains": ["legal"], "text": "t", "data": {}}),
            ("put", "g1", {"kind": "guardrail", "rules": ["be kind"], "data": {}}),
            ("put", "u1", {"kind": "profile", "name": "Ada", "data": {}}),
            ("put", "t1", {"kind": "task", "domain": "legal", "goal": "g", "status": "open", "data": {}}),
            ("put", "m-ada", {"kind": "memory", "facts": ["likes tea"], "user_id": "u1", "data": {}}),
            ("put", "m-all", {"kind": "memory", "facts": ["open 9-5"], "user_id": None, "data": {}}),
            ("append", "s1", None),
        ],
    )
    alone, reads_alone = _gather_counting_reads(log.store, "app")
    log.load_others("app", 1000)
    some, reads_some = _gather_counting_reads(log.store, "app")
    log.load_others("app", 9000, first=1000)
    log.load_others("elsewhere", 1000)
    crowded, reads_crowded = _gather_counting_reads(log.store, "app")
    assert crowded == some == alone
    assert [m["id"] for m in crowded.memories] == ["m-ada", "m-all"]
    assert reads_crowded == reads_some
    # Alone, a range can end the database; among others, a range (instructions, guardrails, the session's
    # turns, each query term's postings of nobody and of the user) reads one record past its end.
    assert reads_alone <= reads_some <= reads_alone + 9
    assert reads_some <= 40  # the needed keys, not the namespace
    log.store.close()


# ------------------------------------------------------------------ building the indexes from ctx
def _written(tmp_path: Path) -> _Log:
    """A store whose history moved contexts between kinds and memories between users."""
    log = _Log(str(tmp_path / "store"))
    log.apply_ops(
        "app",
        [
            ("put", "a", {"kind": "memory", "facts": ["f"], "user_id": "u1", "data": {}}),
            ("put", "b", {"kind": "memory", "facts": ["f"], "user_id": None, "data": {}}),
            ("put", "c", {"kind": "task", "domain": "legal", "goal": "g", "status": "open", "data": {}}),
            ("put", "a", {"kind": "memory", "facts": ["f"], "user_id": "u2", "data": {}}),
            ("put", "c", {"kind": "memory", "facts": ["f"], "user_id": "u1", "data": {}}),
            ("append", "s", None),
            ("delete", "b", None),
        ],
    )
    log.load_others("crowd", 50)
    return log


def _current_environment(store_dir: Path) -> lmdb.Environment:
    generation = (store_dir / "CURRENT").read_text().strip()
    return lmdb.open(str(store_dir / generation), max_dbs=16)


def test_a_store_written_before_the_indexes_builds_them_when_opened(tmp_path: Path) -> None:
    log = _written(tmp_path)
    maintained = index_state(log.store)
    listed = log.store.list("app", kind="memory").items
    log.store.close()
    env = _current_environment(tmp_path / "store")
    with env.begin(write=True) as txn:  # what a store of the release before them holds: no trace of them
        txn.drop(env.open_db(b"by_kind", txn=txn), delete=True)
        # and a database an earlier index format kept, which the rebuild drops
        txn.put(b"app\x00-\x00b", b"", db=env.open_db(b"by_owner", txn=txn))
        meta = env.open_db(b"meta", txn=txn)
        txn.delete(_INDEX_FORMAT, db=meta)
        for key in [key for key, _ in txn.cursor(db=meta) if key.startswith(_KIND_COUNT)]:
            txn.delete(key, db=meta)
    env.close()

    reopened = ContextStore(str(tmp_path / "store"))
    assert index_state(reopened) == maintained
    assert reopened.list("app", kind="memory").items == listed
    assert owned_memories(reopened, "app", ["u1"], "f") == ["c"]
    reopened.close()
    env = _current_environment(tmp_path / "store")
    with pytest.raises(lmdb.NotFoundError), env.begin() as txn:
        env.open_db(b"by_owner", txn=txn, create=False)
    env.close()


def test_a_store_applied_to_by_a_release_without_indexes_rebuilds_them(tmp_path: Path) -> None:
    """A snapshot with indexes installed on a release without them (a mixed cluster), which then applies
    entries: its indexes are stale, and the upgraded node must not trust them."""
    log = _written(tmp_path)
    log.store.close()
    env = _current_environment(tmp_path / "store")
    with env.begin(write=True) as txn:  # the older release applies two entries, touching ctx alone
        ctx, meta = env.open_db(b"ctx", txn=txn), env.open_db(b"meta", txn=txn)
        record = orjson.loads(txn.get(_key("app", "a"), db=ctx))
        record["fields"]["user_id"] = "u3"
        txn.put(_key("app", "a"), orjson.dumps(record), db=ctx)
        txn.delete(_key("app", "c"), db=ctx)
        txn.put(_APPLIED, _U64.pack(_U64.unpack(txn.get(_APPLIED, db=meta))[0] + 2), db=meta)
    env.close()

    reopened = ContextStore(str(tmp_path / "store"))
    assert index_state(reopened) == derived_index_state(ctx_records(reopened))
    assert owned_memories(reopened, "app", ["u3"], "f") == ["a"]
    assert reopened.count_by_kind()["memory"] == 46  # crowd's 45 and a (c is gone)
    reopened.close()


def test_a_chat_recalls_memories_sharing_a_word_or_near_the_best_and_standing_out_in_rank_order() -> None:
    ranked = [(1.0, "best"), (RECALL_FLOOR, "at-floor"), (RECALL_FLOOR - 0.01, "below"), (0.0, "worded-weakest")]
    found = SearchHits([(score, {"id": i}) for score, i in ranked], 2, 10, 4, frozenset({"best", "worded-weakest"}))
    assert [context["id"] for context in _relevant(found)] == ["best", "at-floor", "worded-weakest"]  # no spread
    assert _relevant(SearchHits([], 0, 10, 0)) == []
    # With cosines, near the best by fused score is not enough: the cosine must stand out from the mean.
    cosines = {"best": 0.7, "at-floor": 0.3 + RECALL_STANDOUT * 0.1, "below": 0.9, "worded-weakest": 0.1}
    flat = dataclasses.replace(found, cosines=cosines, spread=(0.3, 0.1))
    assert [context["id"] for context in _relevant(flat)] == ["best", "at-floor", "worded-weakest"]
    lifted = dataclasses.replace(flat, spread=(0.35, 0.1))  # at-floor now stands 1.5 deviations out
    assert [context["id"] for context in _relevant(lifted)] == ["best", "worded-weakest"]
    nothing_stands_out = dataclasses.replace(flat, spread=(0.69, 0.1), worded=frozenset())
    assert _relevant(nothing_stands_out) == []  # a message that matches nothing recalls nothing


_VARIANT = st.one_of(
    ANY,
    st.builds(
        lambda user, facts, data: {"kind": "memory", "facts": facts, "user_id": user, "tags": [], "data": data},
        st.sampled_from(USERS),
        st.lists(st.sampled_from(["likes tea", "likes coffee", ""]), max_size=2),
        st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 2), max_size=1),
    ),
)


@settings(max_examples=300, deadline=None)
@given(old=_VARIANT, new=_VARIANT, context_id=st.sampled_from(["m1", "u1", "s1"]))
def test_a_rewrite_judged_the_same_index_input_has_the_same_entries(
    old: dict[str, Any], new: dict[str, Any], context_id: str
) -> None:
    key = _key("app", context_id)

    def record(fields: dict[str, Any]) -> dict[str, Any]:
        kind = fields["kind"]
        return {"kind": kind, "fields": {k: v for k, v in fields.items() if k != "kind"}, "version": 1}

    before, after = record(old), record(new)
    if _same_index_input(key, before, after):
        assert _index_entries(key, before) == _index_entries(key, after)
