"""The LMDB state machine against a plain Python model (hypothesis stateful testing).

Every rule applies one log entry to the real ``ContextStore`` and the same
operation to a dict-based model; after every step the store's reads equal
the model. Rules cover puts (each kind), compare-and-set with right and wrong
versions, appends with and without idempotency keys, deletes, atomic batches,
leader-proposed TTL expiry, snapshots pinned at one index and written (on
another thread) after later entries were applied, installed into a fresh
store, and the
same entries applied again (journal replay after a crash). After every step
the secondary indexes (by kind, memories by owner) and the per-kind counts
are what the model's contexts derive, so overwrites that change a kind or a
memory's user, deletes, expiry, batches and appends that create sessions
all keep them in step, and a snapshot carries them.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import threading
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mcpdb.store import snapshot
from mcpdb.store.commands import Command, from_entry
from mcpdb.store.snapshot import PinnedVersion
from mcpdb.store.state_machine import ContextStore, _key
from tests.store_helpers import derived_index_state, index_state

NAMESPACES = ["a", "b"]
IDS = ["x", "y", "z", "s1", "s2"]
USERS = [None, "u1", "u2"]
CONTEXTS = st.sampled_from(
    [
        {"kind": "memory", "facts": ["likes tea"], "data": {}, "user_id": None, "tags": []},
        {"kind": "memory", "facts": ["likes maths"], "data": {}, "user_id": "u1", "tags": []},
        {"kind": "memory", "facts": ["likes chess"], "data": {}, "user_id": "u2", "tags": []},
        {"kind": "session", "data": {}, "user_id": "u1", "turns": [{"role": "user", "content": "hi", "metadata": {}}]},
        {"kind": "task", "domain": "maths", "goal": "tutor", "status": "open", "data": {}},
        {"kind": "profile", "name": "Ada", "preferences": {"tone": "warm"}, "goals": ["learn"], "data": {}},
        {"kind": "instruction", "role": "tutor", "domains": ["maths"], "text": "Be clear.", "style": None, "data": {}},
    ]
)
TURN = st.builds(
    lambda role, content: {"role": role, "content": content, "metadata": {}},
    st.sampled_from(["user", "assistant"]),
    st.text(max_size=20),
)


class StoreMachine(RuleBasedStateMachine):
    """Model: {(ns, id): {"record": fields+kind, "version", "created_at", "expires_at", "turns"}}."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp()
        self.store = ContextStore(self.directory + "/store")
        self.model: dict[tuple[str, str], dict[str, Any]] = {}
        self.idempotency: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.index = 1
        self.now = 1_000.0
        self.applied: list[tuple[int, Command]] = []
        self.pinned: tuple[PinnedVersion, int, dict[Any, Any], dict[str, Any]] | None = None

    def teardown(self) -> None:
        if self.pinned is not None:
            self.pinned[0].txn.abort()
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------ helpers
    def _apply(self, command: dict[str, Any]) -> dict[str, Any]:
        self.index += 1
        self.now += 1.0
        # The rules write entries in release 0.1's shape (no version): they must decode and apply as then.
        decoded = from_entry({**command, "now": self.now})
        self.applied.append((self.index, copy.deepcopy(decoded)))
        result = self.store.apply(self.index, decoded)
        assert result is not None
        return result

    def _version(self, ns: str, context_id: str) -> int:
        entry = self.model.get((ns, context_id))
        return entry["version"] if entry else 0

    def _model_put(self, ns: str, context_id: str, context: dict[str, Any], ttl: int | None) -> None:
        old = self.model.get((ns, context_id))
        fields = {k: v for k, v in context.items() if k != "turns"}
        turns = (
            [dict(t, timestamp=self.now) for t in context.get("turns", [])] if context["kind"] == "session" else None
        )
        if old is not None and old["record"]["kind"] == "session":
            self._forget_idempotency(ns, context_id)
        self.model[(ns, context_id)] = {
            "record": fields,
            "version": self.index,
            "created_at": old["created_at"] if old else self.now,
            "updated_at": self.now,
            "ttl": ttl,
            "expires_at": self.now + ttl if ttl else None,
            "turns": turns,
        }

    def _forget_idempotency(self, ns: str, context_id: str) -> None:
        for key in [k for k in self.idempotency if k[:2] == (ns, context_id)]:
            del self.idempotency[key]

    def _model_delete(self, ns: str, context_id: str) -> None:
        self._forget_idempotency(ns, context_id)
        del self.model[(ns, context_id)]

    # ------------------------------------------------------------ rules
    @initialize()
    def start(self) -> None:
        assert self.store.applied_index() == 0

    @rule(
        ns=st.sampled_from(NAMESPACES),
        context_id=st.sampled_from(IDS),
        context=CONTEXTS,
        ttl=st.one_of(st.none(), st.integers(1, 5)),
        cas=st.sampled_from(["none", "right", "wrong", "create"]),
    )
    def put(self, ns: str, context_id: str, context: dict[str, Any], ttl: int | None, cas: str) -> None:
        current = self._version(ns, context_id)
        expected = {"none": None, "right": current, "wrong": current + 1000, "create": 0}[cas]
        result = self._apply(
            {"op": "put", "ns": ns, "id": context_id, "context": context, "ttl": ttl, "if_version": expected}
        )
        if expected is not None and expected != current:
            assert result == {
                "ok": False,
                "error": "version_conflict",
                "message": result["message"],
                "current_version": current,
            }
            return
        assert result["ok"] and result["version"] == self.index
        assert result["created"] == (current == 0)
        self._model_put(ns, context_id, context, ttl)

    @rule(
        ns=st.sampled_from(NAMESPACES),
        context_id=st.sampled_from(IDS),
        turns=st.lists(TURN, min_size=1, max_size=3),
        key=st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
    )
    def append(self, ns: str, context_id: str, turns: list[dict[str, Any]], key: str | None) -> None:
        result = self._apply({"op": "append", "ns": ns, "id": context_id, "turns": turns, "idempotency_key": key})
        entry = self.model.get((ns, context_id))
        if key is not None and (ns, context_id, key) in self.idempotency:
            first = self.idempotency[(ns, context_id, key)]
            assert result["replayed"] and result["version"] == first["version"]
            return
        if entry is not None and entry["record"]["kind"] != "session":
            assert result["error"] == "wrong_kind" and result["current_version"] == entry["version"]
            return
        if entry is None:
            entry = {
                "record": {"kind": "session", "data": {}, "user_id": None},
                "version": self.index,
                "created_at": self.now,
                "updated_at": self.now,
                "ttl": None,
                "expires_at": None,
                "turns": [],
            }
            self.model[(ns, context_id)] = entry
        first_seq = len(entry["turns"])
        entry["turns"].extend(dict(t, timestamp=self.now) for t in turns)
        entry["version"] = self.index
        entry["updated_at"] = self.now
        assert result == {"ok": True, "version": self.index, "turn_count": len(entry["turns"]), "first_seq": first_seq}
        if key is not None:
            self.idempotency[(ns, context_id, key)] = result

    @rule(ns=st.sampled_from(NAMESPACES), context_id=st.sampled_from(IDS), cas=st.booleans())
    def delete(self, ns: str, context_id: str, cas: bool) -> None:
        current = self._version(ns, context_id)
        result = self._apply({"op": "delete", "ns": ns, "id": context_id, "if_version": current if cas else None})
        if current == 0:
            assert result["error"] == "not_found"
            return
        assert result == {"ok": True, "version": self.index}
        self._model_delete(ns, context_id)

    @rule(
        ns=st.sampled_from(NAMESPACES),
        puts=st.lists(st.tuples(st.sampled_from(IDS), CONTEXTS), max_size=3),
        doomed=st.booleans(),
    )
    def batch(self, ns: str, puts: list[tuple[str, dict[str, Any]]], doomed: bool) -> None:
        ops: list[dict[str, Any]] = [
            {"op": "put", "id": i, "context": c, "ttl": None, "if_version": None} for i, c in puts
        ]
        if doomed:  # a CAS that cannot hold: nothing in the batch may apply
            ops.append(
                {
                    "op": "put",
                    "id": "x",
                    "context": {"kind": "memory", "facts": ["f"]},
                    "ttl": None,
                    "if_version": self._version(ns, "x") + 1000,
                }
            )
        if not ops:
            return
        before = self._snapshot_reads()
        result = self._apply({"op": "batch", "ns": ns, "ops": ops})
        if doomed:
            assert result["error"] == "version_conflict"
            assert self._snapshot_reads() == before
            return
        assert result["ok"]
        for context_id, context in puts:
            self._model_put(ns, context_id, context, None)

    @rule(advance=st.integers(0, 6), renew=st.booleans())
    def expire(self, advance: int, renew: bool) -> None:
        self.now += advance
        due = self.store.expired(self.now + 1)
        expected_due = sorted(
            (ns, i, e["version"])
            for (ns, i), e in self.model.items()
            if e["expires_at"] is not None and e["expires_at"] <= self.now + 1
        )
        assert sorted(due) == expected_due
        if renew and due:
            # A write lands between the leader's scan and its expiry entry:
            # the renewed context must survive the stale expiry item.
            ns, context_id, _ = due[0]
            context = {"kind": "memory", "facts": ["renewed"], "data": {}, "user_id": None, "tags": []}
            # Its new TTL is due too by the time the expiry entry applies:
            # only the version tells the two writes apart.
            self._apply({"op": "put", "ns": ns, "id": context_id, "context": context, "ttl": 1, "if_version": None})
            self._model_put(ns, context_id, context, 1)
        result = self._apply({"op": "expire", "items": [list(item) for item in due]})
        gone = [
            (ns, i)
            for ns, i, v in due
            if self.model[(ns, i)]["version"] == v and self.model[(ns, i)]["expires_at"] <= self.now
        ]
        assert result["expired"] == len(gone)
        for ns, context_id in gone:
            self._model_delete(ns, context_id)

    @precondition(lambda self: self.applied)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Journal replay after a restart: old entries change nothing and return None."""
        index, command = data.draw(st.sampled_from(self.applied))
        before = self._snapshot_reads()
        assert self.store.apply(index, command) is None
        assert self.store.applied_index() == self.index
        assert self._snapshot_reads() == before

    @precondition(lambda self: self.pinned is None)
    @rule()
    def pin_snapshot(self) -> None:
        """Pin a snapshot's version; other rules keep applying entries before it is written."""
        self.pinned = (
            self.store.pin_snapshot(),
            self.store.applied_index(),
            self._snapshot_reads(),
            index_state(self.store),
        )

    @precondition(lambda self: self.pinned is not None)
    @rule()
    def write_pinned_snapshot_into_fresh_store(self) -> None:
        """The snapshot written from the pin is the state at the pinned index, whatever was applied
        since (the copy runs on another thread, as in a node)."""
        assert self.pinned is not None
        pinned, index, reads_at_pin, indexes_at_pin = self.pinned
        self.pinned = None
        assert pinned.index == index
        path = self.directory + "/snap.tar"
        raft_data = (("cmd", index, 1), ("cmd", index - 1, 1), None)
        writer = threading.Thread(target=snapshot.write, args=(path, pinned, raft_data))
        writer.start()
        writer.join()
        fresh_dir = tempfile.mkdtemp()
        fresh = ContextStore(fresh_dir + "/store")
        try:
            assert fresh.install_snapshot(path) == raft_data
            assert fresh.applied_index() == index
            assert _reads(fresh) == reads_at_pin
            assert index_state(fresh) == indexes_at_pin
        finally:
            fresh.close()
            shutil.rmtree(fresh_dir, ignore_errors=True)

    def _snapshot_reads(self) -> dict[Any, Any]:
        return _reads(self.store)

    @invariant()
    def store_equals_model(self) -> None:
        expected = {}
        for (ns, context_id), entry in self.model.items():
            record = {
                "namespace": ns,
                "id": context_id,
                **entry["record"],
                "version": entry["version"],
                "created_at": entry["created_at"],
                "updated_at": entry["updated_at"],
                "ttl": entry["ttl"],
                "expires_at": entry["expires_at"],
            }
            if entry["record"]["kind"] == "session":
                record["turn_count"] = len(entry["turns"])
                record["turns"] = entry["turns"]
            expected[(ns, context_id)] = record
        assert self._snapshot_reads() == expected
        assert self.store.applied_index() == (self.index if self.index > 1 else 0)

    @invariant()
    def indexes_and_counts_follow_the_model(self) -> None:
        """The index databases hold exactly the entries the model's contexts derive (no stale entry
        of an overwritten kind or user, none missing), and reading through them gives the model's."""
        model = {key: entry["record"] for key, entry in self.model.items()}
        stored = {_key(ns, i): _as_stored(record) for (ns, i), record in model.items()}
        assert index_state(self.store) == derived_index_state(stored)
        for kind in ("memory", "task", "profile", "instruction", "session"):
            of_kind = sorted((ns, i) for (ns, i), record in model.items() if record["kind"] == kind)
            assert [(c["namespace"], c["id"]) for c in self.store.scan(kind=kind, limit=1000)] == of_kind
            for ns in NAMESPACES:
                listed = [c["id"] for c in self.store.list(ns, kind=kind, limit=1000).items]
                assert listed == [i for n, i in of_kind if n == ns]

    @invariant()
    def listing_is_ordered_and_paged(self) -> None:
        for ns in NAMESPACES:
            ids, cursor = [], None
            while True:
                page = self.store.list(ns, limit=2, cursor=cursor)
                ids += [item["id"] for item in page.items]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert ids == sorted(i for (n, i) in self.model if n == ns)


def _as_stored(record: dict[str, Any]) -> dict[str, Any]:
    """A model record in the shape ctx stores (kind, and the other fields apart)."""
    return {"kind": record["kind"], "fields": {k: v for k, v in record.items() if k != "kind"}}


def _reads(store: ContextStore) -> dict[Any, Any]:
    out = {}
    for ns in NAMESPACES:
        for context_id in IDS:
            record = store.get(ns, context_id)
            if record is not None:
                out[(ns, context_id)] = record
    return out


StoreMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestStore = StoreMachine.TestCase
