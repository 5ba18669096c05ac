"""LMDB state machine: the replicated context store of one node.

``apply(index, command)`` is the only way state changes; the commands and their
versioned wire format are ``mcpdb.store.commands``. It runs the command
and records ``index`` as the applied index in the same write transaction, so a
journal replayed after a crash skips what is already applied instead of
applying it twice. Everything a command needs to be deterministic (the
proposer's clock, the TTL deadline) travels inside the command: two replicas
that apply the same log hold byte-identical records.

Layout (named LMDB databases, keys are bytes):

- ``meta``:   ``applied`` -> last applied Raft index (8 bytes, big-endian);
              ``changes_trimmed`` -> the last trimmed history version;
              ``vectors_changed \0 ns``, ``vectors_epoch`` -> changes to a namespace's
              vectors, and of model (``mcpdb.store.vector_matrices``);
              ``kind_count \0 kind`` -> contexts of that kind (8 bytes, absent at 0);
              ``index_format`` -> the indexes' format (4 bytes) and the applied index
              they are current at (8 bytes)
- ``ctx``:    ``ns \\0 id`` -> record (JSON): kind, fields, version, times, TTL
- ``turns``:  ``ns \\0 id \\0 seq(8 bytes)`` -> one session turn (JSON); turns are
              separate keys so an append writes one small value, not the session
- ``expiry``: ``expires_at_ms(8 bytes) ns \\0 id`` -> b"" (ordered by deadline)
- ``idem``:   ``ns \\0 id \\0 key`` -> result of the append that used that key
- ``nodes``:  ``node id`` -> registration of a cluster member (JSON)
- ``tokens``: ``token id`` -> scoped token (JSON: id, SHA-256 of its secret, scopes)
- ``changes``: ``version(8 bytes) position(4 bytes)`` -> one change to a context
              (JSON: namespace, id, kind, action), the history watches read;
              the oldest versions are trimmed past ``change_history`` changes
- ``by_kind``: ``kind \0 ns \0 id`` -> b"", every context: a namespace's contexts
              of one kind (a listing by kind, a chat's instructions and
              guardrails) and one kind across namespaces are each one key range
- ``lexical``: a search's postings, in blocks per term, owner class, kind and entry
              (``mcpdb.store.postings``)
- ``terms``:  ``ns \0 owner \0 kind \0 id`` -> the context's terms and its postings' block
- ``vectors``: ``ns \0 owner \0 kind \0 id`` -> the version it is for (8 bytes) and the
              context's unit vector (float16); a write that changes what a scan of it
              reads also counts a change in ``meta`` (``mcpdb.store.vector_matrices``)
- ``to_embed``: ``ns \0 id`` -> a version waiting for its vector (the embedder's queue)
Secondary indexes and counts. What ``by_kind``, ``lexical``, ``terms`` and the
per-kind counts hold is a function of ``ctx`` alone, written in the transaction of the
write that changes ``ctx`` (put, delete, expiry, batch, an append that
creates a session), so every replica holds the same indexes at the same
applied index (the same postings: which block holds one depends on the
entries that wrote them, or on a rebuild, see ``postings``; no answer does),
a snapshot carries them, and a chat's reads do not grow with the namespace.
``apply`` stamps ``index_format`` with the applied index; a store opened
(or a snapshot installed) whose stamp is missing, of another format, or
behind its applied index (written by a release without indexes, or applied
to by one) gets them rebuilt from ``ctx`` before anyone reads it.

Snapshots (``mcpdb.store.snapshot``) are tar files holding pysyncobj's
bookkeeping and a compacted LMDB copy of a version the Raft thread pinned
(``pin_snapshot``), so they are exactly the state at their index; the copy
itself runs on another thread.

Threads: one writer, the Raft thread (``apply``, ``commit``, ``pin_snapshot``,
``install_snapshot``), and any number of readers. LMDB read transactions are
MVCC snapshots that never wait for the writer, so readers take no lock: each
read takes the current ``_Generation`` (environment and its databases) once and
uses it throughout. Installing a snapshot replaces the generation; a reader
still holding the old one finishes on it (the old environment closes when the
last reference goes, and its unlinked files stay readable until then).

LMDB is never flushed per commit (NOSYNC): the Raft journal and the last
snapshot are the durable record, and LMDB is a cache of applying them. A
process crash loses nothing (the page cache survives it). A power loss or
kernel crash can leave LMDB corrupt, undetectably so, since LMDB has no page
checksums; so a store that was not closed cleanly and finds the machine
rebooted since it opened (the kernel's boot id changed) discards itself and
is rebuilt from the snapshot and the journal replay.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import math
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, assert_never, cast

import lmdb
import orjson

from mcpdb.errors import HistoryTrimmed
from mcpdb.fsutil import fsync_path
from mcpdb.retrieval import lexical, vectors
from mcpdb.retrieval.text import embedding_text, searchable_text
from mcpdb.store import background_io, postings, search, snapshot
from mcpdb.store.commands import (
    Append,
    Batch,
    BatchPut,
    Command,
    CreateToken,
    Delete,
    DeregisterNode,
    Expire,
    Put,
    RegisterNode,
    RevokeToken,
    SetVectors,
    Unreadable,
)
from mcpdb.store.defaults import DEFAULT_CHANGE_HISTORY
from mcpdb.store.search import SearchHits, SearchQuery
from mcpdb.store.snapshot import PinnedVersion
from mcpdb.store.vector_matrices import VECTORS_EPOCH, VectorMatrices, changed_key, count_change

_log = logging.getLogger(__name__)

_U64 = struct.Struct(">Q")
_SEP = b"\x00"
_DB_NAMES = (
    b"meta",
    b"ctx",
    b"turns",
    b"expiry",
    b"idem",
    b"nodes",
    b"tokens",
    b"changes",
    b"by_kind",
    b"lexical",
    b"terms",
    b"vectors",
    b"to_embed",
)
_INDEXES = (b"by_kind", b"lexical", b"terms")
# Databases an earlier index format kept, dropped by the rebuild (``by_owner``, a memory per owner, is what
# the owner-grouped postings and vectors made redundant once a chat's memories came from a search).
_RETIRED = (b"by_owner",)
_APPLIED = b"applied"
_TRIMMED = b"changes_trimmed"
_INDEX_FORMAT = b"index_format"  # -> _INDEX_MARK: the indexes' format and the applied index they are current at
_INDEX_MARK = struct.Struct(">IQI")  # format, applied index, the text analyzer's fingerprint
_INDEX_VERSION = 4  # what ``by_kind``, ``lexical``, ``terms`` and the counts hold; another value rebuilds them
_REBUILD_BLOCKS = 50_000  # postings blocks a rebuild gathers in memory before writing them (tens of MB)
_EMBEDDING_MODEL = b"embedding_model"  # -> the model the stored vectors were made with (utf-8)
_KIND_COUNT = b"kind_count\x00"  # + kind -> contexts of that kind (8 bytes); absent when none
_NOBODY = lexical.NOBODY  # the owner of a context of nobody's; a user's owner starts with _USER
_USER = b"u"
_U32 = struct.Struct(">I")
_CURRENT = "CURRENT"
_CLEAN_MARKER = "CLEAN"
_BOOT_ID_FILE = "BOOT_ID"
_KERNEL_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _write_durably(path: str, text: str) -> None:
    """Write a small file so that it survives a power loss: temp file, fsync, rename, fsync dir."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(path) or ".")


_Dbs = dict[bytes, Any]  # name -> LMDB database handle (``lmdb._Database``, private in py-lmdb)


def _key(namespace: str, context_id: str) -> bytes:
    return namespace.encode() + _SEP + context_id.encode()


def _turn_prefix(namespace: str, context_id: str) -> bytes:
    return _key(namespace, context_id) + _SEP


def _owner(user_id: Any) -> bytes:
    """An owner as postings and vectors key it: ``_NOBODY``, or ``_USER`` and the SHA-256 of the user_id's
    JSON. Digested because a user_id is any string (up to 256 KiB, NULs allowed) and an LMDB key at most
    511 bytes; the two lengths differ, so no user's entries fall inside nobody's key range."""
    return _NOBODY if user_id is None else _USER + hashlib.sha256(orjson.dumps(user_id)).digest()


def _lexical_owner(kind: str, context_id: str, fields: dict[str, Any]) -> bytes:
    """Whose a context is, for a search by user: a memory its user's, a profile its user's (a profile's id
    is the user's id, as a chat reads it), everything else nobody's, so any user's search may return it."""
    if kind == "profile":
        return _owner(context_id)
    return _owner(fields.get("user_id")) if kind == "memory" else _NOBODY


def _index_entries(
    key: bytes, record: dict[str, Any] | None
) -> tuple[builtins.list[tuple[bytes, bytes]], builtins.list[tuple[bytes, int]], postings.Posted | None]:
    """The (index database, key) pairs of the context stored at ctx ``key``, the (lexical counter,
    length) pairs it adds to, and what the lexical index holds of it: a function of its record alone,
    so maintaining them write by write and building them from ``ctx`` give the same indexes. Sessions
    are not in the lexical index: their turns are kept apart from the record (see the layout)."""
    if record is None:
        return [], [], None
    kind, fields = record["kind"], record["fields"]
    entries = [(b"by_kind", kind.encode() + _SEP + key)]
    namespace, raw_id = key.split(_SEP, 1)
    if kind == "session":
        return entries, [], None
    owner = _lexical_owner(kind, raw_id.decode(), fields)
    context = postings.posted(namespace, owner, kind, raw_id, fields)
    if context is None:
        return entries, [], None
    return entries, [(counter, context.length) for counter in lexical.counter_keys(namespace, owner, kind)], context


def _drop_stray_vectors(txn: lmdb.Transaction, dbs: _Dbs) -> None:
    """Delete every vector that is not its context's current one (where and for which version): a
    release without vectors may have applied writes to this store, or to the snapshot it came from."""
    cursor = txn.cursor(db=dbs[b"vectors"])
    stray = []
    for raw_key, value in cursor:
        key = bytes(raw_key)
        namespace, rest = key.split(_SEP, 1)
        _, _, raw_id = lexical.split_owned(rest)
        raw = txn.get(namespace + _SEP + raw_id, db=dbs[b"ctx"])
        record = orjson.loads(raw) if raw is not None else None
        current = record is not None and _embeddable(record) and _vector_key(namespace + _SEP + raw_id, record) == key
        if not current or _U64.unpack_from(value)[0] != record["version"]:  # type: ignore[index]
            stray.append(key)
    for key in stray:
        txn.delete(key, db=dbs[b"vectors"])


def _requeue_vectored(txn: lmdb.Transaction, dbs: _Dbs) -> None:
    """Drop every stored vector and queue its context for the embedder again (its model changed, or a
    store of the release before models were recorded holds vectors of an unknown one)."""
    queue = dbs[b"to_embed"]
    for raw_key, value in txn.cursor(db=dbs[b"vectors"]):
        namespace, rest = bytes(raw_key).split(_SEP, 1)
        _, _, raw_id = lexical.split_owned(rest)
        txn.put(namespace + _SEP + raw_id, value[: _U64.size], db=queue)
    txn.drop(dbs[b"vectors"], delete=False)


def _same_index_input(key: bytes, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two versions of a context have the same kind, owner and searchable text, everything
    ``_index_entries`` reads: their entries are then equal, and need not be computed (a context's words
    are analyzed and stemmed for them, the dearest part of a write)."""
    if old["kind"] != new["kind"]:
        return False
    context_id = key.split(_SEP, 1)[1].decode()
    return _lexical_owner(old["kind"], context_id, old["fields"]) == _lexical_owner(
        new["kind"], context_id, new["fields"]
    ) and list(searchable_text(old["kind"], old["fields"])) == list(searchable_text(new["kind"], new["fields"]))


def _same_embedding(key: bytes, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two versions of a context embed the same text and keep their vector in the same place."""
    return _vector_key(key, old) == _vector_key(key, new) and embedding_text(
        old["kind"], old["fields"]
    ) == embedding_text(new["kind"], new["fields"])


def _embeddable(record: dict[str, Any]) -> bool:
    """Whether a context gets a vector: it is searched (not a session) and has text."""
    return record["kind"] != "session" and bool(embedding_text(record["kind"], record["fields"]))


def _vector_key(key: bytes, record: dict[str, Any]) -> bytes:
    """Where the vector of the context at ctx ``key`` with ``record`` is kept (by owner and kind)."""
    namespace, raw_id = key.split(_SEP, 1)
    owner = _lexical_owner(record["kind"], raw_id.decode(), record["fields"])
    return postings.owned_key(namespace, owner, record["kind"], raw_id)


def _add_lexical_count(txn: lmdb.Transaction, dbs: _Dbs, counter: bytes, contexts: int, length: int) -> None:
    """Add to a counter, never below zero: a counter is statistics, and an index built by another
    analyzer (a snapshot from a node on another Unicode version, before its rebuild) must not make an
    entry fail here and on no other replica."""
    held, total = lexical.unpack_counter(txn.get(counter, db=dbs[b"meta"]))
    held, total = max(0, held + contexts), max(0, total + length)
    if held:
        txn.put(counter, lexical.pack_counter(held, total), db=dbs[b"meta"])
    else:  # absent rather than zero, as a rebuild from ctx leaves it
        txn.delete(counter, db=dbs[b"meta"])


def _add_count(txn: lmdb.Transaction, dbs: _Dbs, kind: str, delta: int) -> None:
    key = _KIND_COUNT + kind.encode()
    raw = txn.get(key, db=dbs[b"meta"])
    count = (_U64.unpack(raw)[0] if raw else 0) + delta
    if count:
        txn.put(key, _U64.pack(count), db=dbs[b"meta"])
    elif raw:  # absent rather than zero: the counts a rebuild derives from ctx have no zeros
        txn.delete(key, db=dbs[b"meta"])


def _ensure_indexes(env: lmdb.Environment, dbs: _Dbs) -> None:
    """Build the indexes and kind counts from ``ctx`` unless they are ``_INDEX_VERSION``'s and current at
    the applied index: a store or snapshot written before them has none, and a release without them
    (0.1, in a mixed cluster) applies entries to a snapshot that has them without updating them.
    Derived from the data alone, so every replica that opens the same data holds the same indexes.
    One write transaction: a crash midway leaves the old mark, and the next open starts again."""
    with env.begin(write=True) as txn:
        raw = txn.get(_APPLIED, db=dbs[b"meta"])
        applied = _U64.unpack(raw)[0] if raw else 0
        if txn.get(_INDEX_FORMAT, db=dbs[b"meta"]) == _INDEX_MARK.pack(_INDEX_VERSION, applied, lexical.ANALYZER):
            return
        started = time.monotonic()
        for name in (*_INDEXES, b"to_embed"):
            txn.drop(dbs[name], delete=False)
        for name in _RETIRED:
            try:
                txn.drop(env.open_db(name, txn=txn, create=False), delete=True)
            except lmdb.NotFoundError:
                pass
        meta = txn.cursor(db=dbs[b"meta"])
        for counter_prefix in (_KIND_COUNT, lexical.COUNTER_PREFIX):
            if meta.set_range(counter_prefix):
                while meta.key().startswith(counter_prefix):
                    if not meta.delete():
                        break
        counts: dict[str, int] = {}
        lexical_counts: dict[bytes, tuple[int, int]] = {}
        _drop_stray_vectors(txn, dbs)
        writer = postings.PostingsWriter(rebuilding=True)
        for key, value in txn.cursor(db=dbs[b"ctx"]):
            record = orjson.loads(value)
            entries, counted, context = _index_entries(key, record)
            for name, index_key in entries:
                txn.put(index_key, b"", db=dbs[name])
            if context is not None:  # in the block of the entry that wrote its version
                writer.add(txn, dbs, record["version"], context)
                if writer.gathered() >= _REBUILD_BLOCKS:
                    writer.flush(txn, dbs)
            counts[record["kind"]] = counts.get(record["kind"], 0) + 1
            if _embeddable(record):
                stored = txn.get(_vector_key(key, record), db=dbs[b"vectors"])
                if stored is None or _U64.unpack_from(stored)[0] != record["version"]:
                    txn.put(key, _U64.pack(record["version"]), db=dbs[b"to_embed"])
            for counter, length in counted:
                held, total = lexical_counts.get(counter, (0, 0))
                lexical_counts[counter] = (held + 1, total + length)
        writer.flush(txn, dbs)
        for kind, count in counts.items():
            _add_count(txn, dbs, kind, count)
        for counter, (held, total) in lexical_counts.items():
            txn.put(counter, lexical.pack_counter(held, total), db=dbs[b"meta"])
        txn.put(_INDEX_FORMAT, _INDEX_MARK.pack(_INDEX_VERSION, applied, lexical.ANALYZER), db=dbs[b"meta"])
    if counts:  # a new, empty store has nothing to report
        _log.info(
            "built the store's indexes (format %d) over %d contexts in %.1f s",
            _INDEX_VERSION,
            sum(counts.values()),
            time.monotonic() - started,
        )


@dataclass(frozen=True)
class Change:
    """One change to one context, at the version (Raft index) of the entry that made it.

    An entry that changes several contexts (a batch, an expiry sweep) gives
    several changes with one version, told apart by ``position``.
    """

    version: int
    position: int
    namespace: str
    id: str
    kind: str
    action: str  # put | append | delete | expire


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def _ok(version: int, **extra: Any) -> dict[str, Any]:
    return {"ok": True, "version": version, **extra}


def _fail(error: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": error, "message": message, **extra}


class _Abort(Exception):
    """Raised inside a write transaction to roll it back and report ``result``."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result["message"])
        self.result = result


_Steps = Generator[None, None, dict[str, Any]]  # an entry's apply, paused between a batch's operations


@dataclass
class _Preparation:
    """An entry applied in steps across several of the writer's ticks (``ContextStore.prepare``): its
    remaining steps, or its result once they ran out."""

    index: int
    steps: _Steps
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Generation:
    """One LMDB environment and its database handles (which belong to that environment only)."""

    env: lmdb.Environment
    dbs: _Dbs
    matrices: VectorMatrices  # whole-namespace searches' vectors, valid for this environment only


def _advance(preparation: _Preparation, deadline: float, clock: Callable[[], float]) -> bool:
    """Run a preparation's steps until it is whole (True) or ``clock`` reaches ``deadline``."""
    if preparation.result is None:
        try:
            while True:
                next(preparation.steps)
                if clock() >= deadline:
                    return False
        except StopIteration as finished:
            preparation.result = finished.value
    return True


class ContextStore:
    """One LMDB environment per node; safe for one writer thread and many reader threads."""

    def __init__(
        self,
        directory: str,
        map_size: int = 8 << 30,
        change_history: int = DEFAULT_CHANGE_HISTORY,
        vector_cache_bytes: int = 256 << 20,
    ) -> None:
        self._directory = directory
        self._vector_cache_bytes = vector_cache_bytes
        self._map_size = map_size
        self._change_history = change_history
        self._change_position = 0
        self._kind_deltas: dict[str, int] = {}  # of the command being applied (see _entry_steps)
        self._lexical_deltas: dict[bytes, tuple[int, int]] = {}  # lexical counter -> (contexts, length), the same
        self._postings = postings.PostingsWriter()  # the postings of the entry being applied
        self.snapshots_installed = 0
        self._group: lmdb.Transaction | None = None
        # The open group's applied index, and whether its entries recorded changes: written and
        # trimmed once, as the group commits (see ``commit``).
        self._group_applied = 0
        self._group_advanced = False
        self._group_changed = False
        self._committed_unannounced = False
        self._preparation: _Preparation | None = None  # the entry ``prepare`` is applying, if any
        os.makedirs(directory, exist_ok=True)
        self.rebuilt_after_unclean_reboot = self._discard_if_untrusted()
        # Excludes the two operations that end a generation: install_snapshot's
        # swap and close(). Readers never take it (see the module docstring).
        self._swap_lock = threading.Lock()
        current = self._current_generation()
        background_io.delete_leftover_trash(directory)  # what a stopped process had not freed yet
        for stray in os.listdir(directory):  # a copy for an install a stop interrupted (none is open yet)
            if stray.startswith("gen-") and stray != current:
                self._discard_generation(stray)
        self._generation = self._open(current)

    @property
    def _dbs(self) -> _Dbs:
        """The current generation's databases, for the writer thread only: it is the thread that
        swaps generations, so they cannot change under it. Readers use the generation they took."""
        return self._generation.dbs

    # ------------------------------------------------------------------ setup
    def _current_generation(self) -> str:
        path = os.path.join(self._directory, _CURRENT)
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        self._set_current("gen-1")
        return "gen-1"

    def _discard_if_untrusted(self) -> bool:
        """Drop the store if the machine rebooted while it was open (see module docstring)."""
        boot_id = _read_text(_KERNEL_BOOT_ID)
        recorded = _read_text(os.path.join(self._directory, _BOOT_ID_FILE))
        clean = os.path.exists(os.path.join(self._directory, _CLEAN_MARKER))
        discard = recorded is not None and boot_id is not None and recorded != boot_id and not clean
        if discard:
            generation = self._current_generation()
            _log.warning("store was open during an unclean reboot; rebuilding it from snapshot and journal")
            shutil.rmtree(os.path.join(self._directory, generation), ignore_errors=True)
        if clean:
            os.unlink(os.path.join(self._directory, _CLEAN_MARKER))
        if boot_id is not None:
            _write_durably(os.path.join(self._directory, _BOOT_ID_FILE), boot_id)
        fsync_path(self._directory)
        return discard

    def _set_current(self, generation: str) -> None:
        _write_durably(os.path.join(self._directory, _CURRENT), generation)

    def _open(self, generation: str) -> _Generation:
        path = os.path.join(self._directory, generation)
        os.makedirs(path, exist_ok=True)
        # NOSYNC: see the module docstring for why the journal, not LMDB, is durable.
        env = lmdb.open(
            path,
            map_size=self._map_size,
            max_dbs=len(_DB_NAMES) + len(_RETIRED),
            sync=False,
            metasync=False,
            readahead=False,
            max_readers=512,
        )
        dbs = {name: env.open_db(name) for name in _DB_NAMES}
        _ensure_indexes(env, dbs)
        return _Generation(env, dbs, VectorMatrices(self._vector_cache_bytes))

    def close(self) -> None:
        """Flush and close; the clean-shutdown marker tells the next open it can trust the files.

        An entry being prepared is dropped first (a node stopped in the middle of a batch); the Raft
        thread drops it itself as it stops (``abandon_preparation``), since LMDB's write transactions
        belong to the thread that began them."""
        self.abandon_preparation()
        self.commit()
        with self._swap_lock:
            self._generation.env.sync(True)
            self._generation.env.close()
        _write_durably(os.path.join(self._directory, _CLEAN_MARKER), "")

    # ------------------------------------------------------------------ apply
    def applied_index(self) -> int:
        generation = self._generation
        with generation.env.begin(db=generation.dbs[b"meta"]) as txn:
            raw = txn.get(_APPLIED)
        return int(_U64.unpack(raw)[0]) if raw else 0

    def apply(self, index: int, command: Command | Unreadable, commit: bool = True) -> dict[str, Any] | None:
        """Apply one committed log entry; returns the result the proposer sees.

        An entry at or below the applied index was applied before (journal
        replay after a restart): it changes nothing and returns None, since
        nobody can be waiting for it any more. An entry ``prepare`` began is
        finished from where it paused (``command`` is then that same entry).

        With ``commit=False`` the entry joins the open group transaction and
        becomes visible (and durable) at the next ``commit()``: the Raft
        thread applies a whole tick's entries in one LMDB transaction.
        """
        preparation = self._take_preparation(index)
        group = self._open_group()
        if index <= self._group_applied:
            result = None
        else:
            preparation = preparation or _Preparation(index, self._entry_steps(group, index, command))
            _advance(preparation, math.inf, time.monotonic)
            result = preparation.result
            self._group_applied, self._group_advanced = index, True
            self._group_changed = self._group_changed or self._change_position > 0
        if commit:
            self.commit()
        return result

    def prepare(
        self,
        index: int,
        command: Callable[[], Command | Unreadable],
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> bool:
        """Apply part of entry ``index`` (the next one) for about ``seconds``, resuming where the last
        call paused; True once it is whole, and ``apply`` of it only finishes it. ``command`` is called
        once, when the entry is begun.

        Why: the Raft thread applies and also reads its sockets, appends, acknowledges and heartbeats.
        A 500-record batch at a million contexts takes 60-200 ms to apply, more on saturated cores,
        and a follower applying it in one call acknowledged nothing meanwhile, so a small write
        behind it waited for the follower's apply as well as its leader's. In steps of ``seconds``
        the thread ticks between them. A batch pauses between two of its operations; other entries
        run whole.

        Nothing of a prepared entry is visible or counted before its ``apply``: it runs in its own
        child transaction of a group that holds nothing else (what was applied before is committed
        first), ``commit`` leaves such a group open, and a snapshot pinned meanwhile is the state at
        the applied index. Which steps ran in which tick changes nothing stored: the operations run
        in the same order in the same transaction. The clock only decides when a step ends."""
        group = self._open_group()
        if index <= self._group_applied:
            return True
        preparation = self._preparation
        if preparation is None or preparation.index != index:
            self.abandon_preparation()
            self.commit()
            group = self._open_group()
            preparation = self._preparation = _Preparation(index, self._entry_steps(group, index, command()))
        try:
            return _advance(preparation, clock() + seconds, clock)
        except BaseException:  # the entry could not be applied here (the node stops): nothing of it stays open
            self.abandon_preparation()
            raise

    def _open_group(self) -> lmdb.Transaction:
        if self._group is None:
            self._group = self._generation.env.begin(write=True)
            raw = self._group.get(_APPLIED, db=self._dbs[b"meta"])
            self._group_applied = _U64.unpack(raw)[0] if raw is not None else 0
        return self._group

    def _take_preparation(self, index: int) -> _Preparation | None:
        """The preparation of entry ``index``, handed over; one of another entry is dropped."""
        preparation = self._preparation
        if preparation is not None and preparation.index != index:
            self.abandon_preparation()
            return None
        self._preparation = None
        return preparation

    def abandon_preparation(self) -> None:
        """Undo an entry ``prepare`` began (a snapshot is installed in its place, or the node stops):
        its group holds nothing else, so the group goes with it. The writer thread only."""
        preparation, self._preparation = self._preparation, None
        if preparation is None:
            return
        try:
            preparation.steps.close()  # aborts its child transaction, if it has not finished
        finally:
            if self._group is not None:
                self._group.abort()
                self._group = None
                self._group_advanced = self._group_changed = False

    def _entry_steps(self, txn: lmdb.Transaction, index: int, command: Command | Unreadable) -> _Steps:
        # The command runs in a child transaction: a refused command (CAS
        # conflict, wrong kind) or a bug in one rolls back alone, while the
        # entry itself still counts as applied. LMDB errors (disk full, I/O)
        # propagate: a replica that cannot apply deterministically must stop,
        # not diverge.
        # Kind counts and lexical counters change by the command's sums, written once before it commits.
        # Its postings are gathered and written as it ends, in blocks of this entry (``postings``).
        child = self._generation.env.begin(write=True, parent=txn)
        self._kind_deltas.clear()
        self._lexical_deltas.clear()
        self._postings.discard()
        self._change_position = 0
        try:
            result = yield from self._dispatch(child, index, command)
            self._postings.flush(child, self._dbs)
            for kind, delta in self._kind_deltas.items():
                _add_count(child, self._dbs, kind, delta)
            for counter, (contexts, length) in self._lexical_deltas.items():
                _add_lexical_count(child, self._dbs, counter, contexts, length)
            child.commit()
            return result
        except _Abort as abort:
            child.abort()
            return abort.result
        except (lmdb.Error, GeneratorExit):
            child.abort()
            raise
        except Exception as error:  # noqa: BLE001 - deterministic bug: refuse the entry
            child.abort()
            _log.exception("entry %d (%s) failed to apply", index, type(command).__name__)
            return _fail("invalid_command", f"entry {index} could not be applied: {error}")
        finally:  # what a rolled-back entry gathered goes with it (a flushed one left nothing)
            self._postings.discard()

    def _dispatch(self, txn: lmdb.Transaction, index: int, command: Command | Unreadable) -> _Steps:
        match command:
            case Put():
                return self._apply_put(txn, index, command)
            case Delete():
                return self._apply_delete(txn, index, command)
            case Append():
                return self._apply_append(txn, index, command)
            case Batch():
                return (yield from self._apply_batch(txn, index, command))
            case Expire():
                return self._apply_expire(txn, index, command)
            case RegisterNode():
                return self._apply_register_node(txn, index, command)
            case DeregisterNode():
                return self._apply_deregister_node(txn, index, command)
            case CreateToken():
                return self._apply_create_token(txn, index, command)
            case RevokeToken():
                return self._apply_revoke_token(txn, index, command)
            case SetVectors():
                return self._apply_set_vectors(txn, index, command)
            case Unreadable():
                _log.error("entry %d is not a valid command (%s); refused", index, command.reason)
                return _fail("invalid_command", f"entry {index} could not be applied: {command.reason}")
            case _:
                assert_never(command)

    def commit(self) -> None:
        """Commit the group transaction: its entries become visible to readers."""
        group = self._group
        if group is None or self._preparation is not None:
            return  # an entry being prepared is committed with its apply, not before
        if self._group_advanced:
            # Once per group rather than per entry: nothing reads the open group's applied index but
            # ``apply``, and trimming the history drops the oldest whole versions until few enough
            # remain, which comes out the same after each entry or after the last one, so every
            # replica holds the same history whichever entries its ticks grouped.
            meta = self._dbs[b"meta"]
            group.put(_APPLIED, _U64.pack(self._group_applied), db=meta)
            group.put(_INDEX_FORMAT, _INDEX_MARK.pack(_INDEX_VERSION, self._group_applied, lexical.ANALYZER), db=meta)
            if self._group_changed:
                self._trim_history(group)
            self._group_advanced = self._group_changed = False
        self._group = None
        group.commit()
        self._committed_unannounced = True

    def take_commits(self) -> bool:
        """Whether anything was committed since the last call (by ``commit``, or by a snapshot's pin
        in the middle of a tick): the Raft thread announces commits once per tick."""
        committed, self._committed_unannounced = self._committed_unannounced, False
        return committed

    def _record_change(
        self, txn: lmdb.Transaction, index: int, namespace: str, context_id: str, kind: str, action: str
    ) -> None:
        key = _U64.pack(index) + _U32.pack(self._change_position)
        txn.put(key, orjson.dumps([namespace, context_id, kind, action]), db=self._dbs[b"changes"])
        self._change_position += 1

    def _trim_history(self, txn: lmdb.Transaction) -> None:
        """Drop whole versions, oldest first, until at most ``change_history`` changes remain."""
        db = self._dbs[b"changes"]
        excess = txn.stat(db)["entries"] - self._change_history
        if excess <= 0:
            return
        cursor = txn.cursor(db=db)
        cursor.first()
        trimmed = 0
        while cursor.key() and (excess > 0 or _U64.unpack(cursor.key()[:8])[0] == trimmed):
            trimmed = _U64.unpack(cursor.key()[:8])[0]
            if not cursor.delete():
                break
            excess -= 1
        txn.put(_TRIMMED, _U64.pack(trimmed), db=self._dbs[b"meta"])

    @staticmethod
    def _get_record(txn: lmdb.Transaction, dbs: _Dbs, key: bytes) -> dict[str, Any] | None:
        raw = txn.get(key, db=dbs[b"ctx"])
        return orjson.loads(raw) if raw is not None else None

    def _check_version(self, record: dict[str, Any] | None, expected: int | None, label: str) -> None:
        if expected is None:
            return
        current = record["version"] if record else 0
        if current != expected:
            raise _Abort(
                _fail(
                    "version_conflict",
                    f"{label}: expected version {expected}, current version is {current}"
                    + (" (does not exist)" if record is None else ""),
                    current_version=current,
                )
            )

    def _drop_turns(self, txn: lmdb.Transaction, namespace: str, context_id: str) -> None:
        prefix = _turn_prefix(namespace, context_id)
        for db in (b"turns", b"idem"):
            cursor = txn.cursor(db=self._dbs[db])
            if cursor.set_range(prefix):
                while cast(bytes, cursor.key()).startswith(prefix):  # no buffers=True: keys are bytes
                    if not cursor.delete():
                        break

    def _reindex(
        self, txn: lmdb.Transaction, index: int, key: bytes, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        """Move the context at ``key`` in the indexes and kind counts from record ``old`` to ``new``
        (None: absent), in the transaction of the write itself, entry ``index``. A vector is for one version: a new
        version keeps the old one's if it embeds the same text under the same owner and kind, else drops
        it and, if it has text, is queued for the embedder (``to_embed``)."""
        self._revector(txn, key, old, new)
        if old is not None and new is not None and _same_index_input(key, old, new):
            return  # a write of data, ttl or status: the entries below would come out equal
        entries_before, counted_before, posted_before = _index_entries(key, old)
        entries_after, counted_after, posted_after = _index_entries(key, new)
        dbs = self._dbs
        if posted_before != posted_after:
            if posted_before is not None:
                self._postings.remove(txn, dbs, posted_before)
            if posted_after is not None:
                self._postings.add(txn, dbs, index, posted_after)
        before, after = set(entries_before), set(entries_after)
        for name, index_key in before - after:
            txn.delete(index_key, db=dbs[name])
        for name, index_key in after - before:
            txn.put(index_key, b"", db=dbs[name])
        if counted_before != counted_after:
            deltas = self._lexical_deltas
            for sign, counted in ((-1, counted_before), (1, counted_after)):
                for counter, length in counted:
                    contexts, total = deltas.get(counter, (0, 0))
                    deltas[counter] = (contexts + sign, total + sign * length)
        if old and (not new or new["kind"] != old["kind"]):
            self._kind_deltas[old["kind"]] = self._kind_deltas.get(old["kind"], 0) - 1
        if new and (not old or old["kind"] != new["kind"]):
            self._kind_deltas[new["kind"]] = self._kind_deltas.get(new["kind"], 0) + 1

    def _revector(
        self, txn: lmdb.Transaction, key: bytes, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        vectors_db, queue = self._dbs[b"vectors"], self._dbs[b"to_embed"]
        kept = None
        if old is not None and old["kind"] != "session":
            old_key = _vector_key(key, old)
            stored = txn.get(old_key, db=vectors_db)
            txn.delete(old_key, db=vectors_db)
            current = stored is not None and _U64.unpack_from(stored)[0] == old["version"]
            if current and new is not None and _same_embedding(key, old, new):
                kept = bytes(stored[_U64.size :])
            elif stored is not None:  # a vector gone: searches of the namespace must not use a matrix holding it
                count_change(txn, self._dbs[b"meta"], changed_key(key.split(_SEP, 1)[0]))
        if new is None or not _embeddable(new):
            txn.delete(key, db=queue)
        elif kept is not None:  # a write that left the text alone (data, ttl, status): the vector still holds
            txn.put(_vector_key(key, new), _U64.pack(new["version"]) + kept, db=vectors_db)
            txn.delete(key, db=queue)
        else:
            txn.put(key, _U64.pack(new["version"]), db=queue)

    def _drop_expiry(self, txn: lmdb.Transaction, record: dict[str, Any] | None, key: bytes) -> None:
        if record and record.get("expires_at") is not None:
            txn.delete(_U64.pack(int(record["expires_at"] * 1000)) + key, db=self._dbs[b"expiry"])

    def _put(
        self,
        txn: lmdb.Transaction,
        index: int,
        namespace: str,
        context_id: str,
        context: dict[str, Any],
        ttl: int | None,
        expected: int | None,
        now: float,
        label: str,
    ) -> bool:
        key = _key(namespace, context_id)
        old = self._get_record(txn, self._dbs, key)
        self._check_version(old, expected, label)
        self._drop_expiry(txn, old, key)
        fields = dict(context)
        kind = fields.pop("kind")
        turns = fields.pop("turns", None) if kind == "session" else None
        if old is not None and old["kind"] == "session":
            self._drop_turns(txn, namespace, context_id)
        record: dict[str, Any] = {
            "kind": kind,
            "fields": fields,
            "version": index,
            "created_at": old["created_at"] if old else now,
            "updated_at": now,
            "ttl": ttl,
            "expires_at": now + ttl if ttl else None,
        }
        if kind == "session":
            record["turn_count"] = 0
            if turns:
                self._write_turns(txn, namespace, context_id, record, turns, now)
        txn.put(key, orjson.dumps(record), db=self._dbs[b"ctx"])
        self._reindex(txn, index, key, old, record)
        if record["expires_at"] is not None:
            txn.put(_U64.pack(int(record["expires_at"] * 1000)) + key, b"", db=self._dbs[b"expiry"])
        self._record_change(txn, index, namespace, context_id, kind, "put")
        return old is None

    def _write_turns(
        self,
        txn: lmdb.Transaction,
        namespace: str,
        context_id: str,
        record: dict[str, Any],
        turns: Sequence[dict[str, Any]],
        now: float,
    ) -> int:
        prefix = _turn_prefix(namespace, context_id)
        first: int = record["turn_count"]
        for offset, turn in enumerate(turns):
            stored = dict(turn)
            if stored.get("timestamp") is None:
                stored["timestamp"] = now
            stored.setdefault("metadata", {})
            txn.put(prefix + _U64.pack(first + offset), orjson.dumps(stored), db=self._dbs[b"turns"])
        record["turn_count"] = first + len(turns)
        return first

    def _delete(
        self,
        txn: lmdb.Transaction,
        index: int,
        namespace: str,
        context_id: str,
        expected: int | None,
        label: str,
        action: str = "delete",
    ) -> None:
        key = _key(namespace, context_id)
        old = self._get_record(txn, self._dbs, key)
        if old is None and expected in (None, 0):
            raise _Abort(_fail("not_found", f"{label}: {namespace}/{context_id} does not exist"))
        self._check_version(old, expected, label)
        assert old is not None  # missing: refused above, or by the version check (expected > 0)
        self._drop_expiry(txn, old, key)
        if old["kind"] == "session":
            self._drop_turns(txn, namespace, context_id)
        txn.delete(key, db=self._dbs[b"ctx"])
        self._reindex(txn, index, key, old, None)
        self._record_change(txn, index, namespace, context_id, old["kind"], action)

    def _apply_put(self, txn: lmdb.Transaction, index: int, c: Put) -> dict[str, Any]:
        created = self._put(txn, index, c.ns, c.id, c.context, c.ttl, c.if_version, c.now, c.id)
        return _ok(index, created=created)

    def _apply_delete(self, txn: lmdb.Transaction, index: int, c: Delete) -> dict[str, Any]:
        self._delete(txn, index, c.ns, c.id, c.if_version, c.id)
        return _ok(index)

    def _apply_append(self, txn: lmdb.Transaction, index: int, c: Append) -> dict[str, Any]:
        namespace, context_id, now = c.ns, c.id, c.now
        key = _key(namespace, context_id)
        idem_key = c.idempotency_key
        if idem_key:
            seen = txn.get(_turn_prefix(namespace, context_id) + idem_key.encode(), db=self._dbs[b"idem"])
            if seen is not None:
                return {**orjson.loads(seen), "ok": True, "replayed": True}
        record = self._get_record(txn, self._dbs, key)
        self._check_version(record, c.if_version, context_id)
        if record is None:
            record = {
                "kind": "session",
                "fields": {"data": {}, "user_id": None},
                "version": index,
                "created_at": now,
                "updated_at": now,
                "ttl": None,
                "expires_at": None,
                "turn_count": 0,
            }
            self._reindex(txn, index, key, None, record)
        elif record["kind"] != "session":
            raise _Abort(
                _fail(
                    "wrong_kind",
                    f"{namespace}/{context_id} is a {record['kind']}, not a session",
                    current_version=record["version"],
                )
            )
        first = self._write_turns(txn, namespace, context_id, record, c.turns, now)
        record["version"] = index
        record["updated_at"] = now
        txn.put(key, orjson.dumps(record), db=self._dbs[b"ctx"])
        self._record_change(txn, index, namespace, context_id, "session", "append")
        result = _ok(index, turn_count=record["turn_count"], first_seq=first)
        if idem_key:
            txn.put(
                _turn_prefix(namespace, context_id) + idem_key.encode(), orjson.dumps(result), db=self._dbs[b"idem"]
            )
        return result

    def _apply_batch(self, txn: lmdb.Transaction, index: int, c: Batch) -> _Steps:
        """Each operation in turn, pausing after each (``prepare``)."""
        namespace, now = c.ns, c.now
        results: list[dict[str, Any]] = []
        for position, op in enumerate(c.ops):
            label = f"op {position} ({op.op} {op.id})"
            if isinstance(op, BatchPut):
                created = self._put(txn, index, namespace, op.id, op.context, op.ttl, op.if_version, now, label)
                results.append({"id": op.id, "created": created})
            else:
                self._delete(txn, index, namespace, op.id, op.if_version, label)
                results.append({"id": op.id, "deleted": True})
            yield
        return _ok(index, results=results)

    def _apply_expire(self, txn: lmdb.Transaction, index: int, c: Expire) -> dict[str, Any]:
        expired = 0
        for namespace, context_id, version in c.items:
            key = _key(namespace, context_id)
            record = self._get_record(txn, self._dbs, key)
            # Only the exact version the leader saw expire: a write that landed
            # after the leader's scan renewed the context and must survive.
            if record is None or record["version"] != version:
                continue
            if record["expires_at"] is None or record["expires_at"] > c.now:
                continue
            self._delete(txn, index, namespace, context_id, None, context_id, "expire")
            expired += 1
        return _ok(index, expired=expired)

    def _apply_register_node(self, txn: lmdb.Transaction, index: int, c: RegisterNode) -> dict[str, Any]:
        txn.put(c.node["id"].encode(), orjson.dumps(c.node), db=self._dbs[b"nodes"])
        return _ok(index)

    def _apply_deregister_node(self, txn: lmdb.Transaction, index: int, c: DeregisterNode) -> dict[str, Any]:
        txn.delete(c.id.encode(), db=self._dbs[b"nodes"])
        return _ok(index)

    def _apply_create_token(self, txn: lmdb.Transaction, index: int, c: CreateToken) -> dict[str, Any]:
        t = c.token
        record = {
            "id": t.id,
            "hash": t.hash,
            "description": t.description,
            "rate_limit": t.rate_limit,
            "scopes": t.scopes,
            "created_at": c.now,
            "version": index,
        }
        if not txn.put(t.id.encode(), orjson.dumps(record), db=self._dbs[b"tokens"], overwrite=False):
            raise _Abort(_fail("conflict", f"token {t.id} already exists"))
        return _ok(index)

    def _apply_revoke_token(self, txn: lmdb.Transaction, index: int, c: RevokeToken) -> dict[str, Any]:
        if not txn.delete(c.id.encode(), db=self._dbs[b"tokens"]):
            raise _Abort(_fail("not_found", f"token {c.id} does not exist"))
        return _ok(index)

    def _apply_set_vectors(self, txn: lmdb.Transaction, index: int, c: SetVectors) -> dict[str, Any]:
        """Store each vector whose context is still at its version; one for an older version, or
        bytes that are no vector, is skipped (every replica decides the same from the same entry).
        Vectors of a model other than the stored ones' are no use beside them (cosine across models
        means nothing): the first vector of a new model queues every vectored context again."""
        model = c.model.encode()
        if txn.get(_EMBEDDING_MODEL, db=self._dbs[b"meta"]) != model:
            _requeue_vectored(txn, self._dbs)
            count_change(txn, self._dbs[b"meta"], VECTORS_EPOCH)
            txn.put(_EMBEDDING_MODEL, model, db=self._dbs[b"meta"])
        stored = 0
        for item in c.items:
            key = _key(c.ns, item.id)
            record = self._get_record(txn, self._dbs, key)
            if record is None or record["version"] != item.version or not _embeddable(record):
                continue
            blob = vectors.checked(item.vector)
            if blob is None:  # no vector: dropped from the queue, or the embedder would retry it forever
                txn.delete(key, db=self._dbs[b"to_embed"])
                continue
            txn.put(_vector_key(key, record), _U64.pack(item.version) + blob, db=self._dbs[b"vectors"])
            txn.delete(key, db=self._dbs[b"to_embed"])
            stored += 1
        if stored:
            count_change(txn, self._dbs[b"meta"], changed_key(c.ns.encode()))
        return _ok(index, stored=stored)

    # ------------------------------------------------------------------ reads
    def _materialise(
        self,
        txn: lmdb.Transaction,
        dbs: _Dbs,
        namespace: str,
        context_id: str,
        record: dict[str, Any],
        with_turns: bool,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"namespace": namespace, "id": context_id, "kind": record["kind"]}
        out.update(record["fields"])
        if record["kind"] == "session":
            out["turn_count"] = record["turn_count"]
            if with_turns:
                out["turns"] = list(self._iter_turns(txn, dbs, namespace, context_id))
        for name in ("version", "created_at", "updated_at", "ttl", "expires_at"):
            out[name] = record[name]
        return out

    @staticmethod
    def _iter_turns(txn: lmdb.Transaction, dbs: _Dbs, namespace: str, context_id: str) -> Iterator[dict[str, Any]]:
        prefix = _turn_prefix(namespace, context_id)
        cursor = txn.cursor(db=dbs[b"turns"])
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not cast(bytes, key).startswith(prefix):  # no buffers=True: keys are bytes
                break
            yield orjson.loads(value)

    def get(self, namespace: str, context_id: str) -> dict[str, Any] | None:
        generation = self._generation
        with generation.env.begin() as txn:
            record = self._get_record(txn, generation.dbs, _key(namespace, context_id))
            if record is None:
                return None
            return self._materialise(txn, generation.dbs, namespace, context_id, record, with_turns=True)

    def appended_with(self, namespace: str, session_id: str, idempotency_key: str) -> list[dict[str, Any]] | None:
        """The turns that the append carrying ``idempotency_key`` stored; None if none committed.

        Lets a retried chat request return the reply already recorded instead
        of generating (and storing) a second one.
        """
        prefix = _turn_prefix(namespace, session_id)
        generation = self._generation
        with generation.env.begin() as txn:
            seen = txn.get(prefix + idempotency_key.encode(), db=generation.dbs[b"idem"])
            if seen is None:
                return None
            result = orjson.loads(seen)
            turns = []
            for seq in range(result["first_seq"], result["turn_count"]):
                value = txn.get(prefix + _U64.pack(seq), db=generation.dbs[b"turns"])
                if value is not None:
                    turns.append(orjson.loads(value))
            return turns

    @staticmethod
    def _contexts(
        txn: lmdb.Transaction[bytes], dbs: _Dbs, kind: str | None, within: bytes, start: bytes
    ) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """(ctx key, record) of the contexts, of ``kind`` if given, whose ctx keys start with ``within``,
        from ctx key ``start`` on, in key order. With a kind they come from ``by_kind``, whose keys are
        the kind and the ctx key: what is read follows the contexts of that kind, not all of them."""
        strip = b"" if kind is None else kind.encode() + _SEP
        cur = txn.cursor(db=dbs[b"ctx" if kind is None else b"by_kind"])
        if not cur.set_range(strip + start):
            return
        for key, value in cur:
            if not key.startswith(strip + within):
                break
            ctx_key = key[len(strip) :]
            raw = value if kind is None else txn.get(ctx_key, db=dbs[b"ctx"])
            assert raw is not None, "by_kind and ctx are written in the same transactions"
            yield ctx_key, orjson.loads(raw)

    def list(
        self, namespace: str, kind: str | None = None, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Contexts of a namespace in id order, those after ``cursor`` if given; sessions come without
        their turns."""
        ns_prefix = namespace.encode() + _SEP
        # Past the cursor (the smallest id above it is the cursor and a NUL) or at the prefix, whichever is later.
        start = ns_prefix + max(prefix.encode(), cursor.encode() + _SEP if cursor else b"")
        items: builtins.list[dict[str, Any]] = []
        next_cursor = None
        generation = self._generation
        with generation.env.begin() as txn:
            for key, record in self._contexts(txn, generation.dbs, kind, ns_prefix + prefix.encode(), start):
                context_id = key[len(ns_prefix) :].decode()
                if len(items) == limit:
                    next_cursor = items[-1]["id"]
                    break
                items.append(self._materialise(txn, generation.dbs, namespace, context_id, record, with_turns=False))
        return Page(items, next_cursor)

    def scan(
        self, after: tuple[str, str] | None = None, kind: str | None = None, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        """Contexts of every namespace in (namespace, id) order after ``after``; without turns."""
        items: builtins.list[dict[str, Any]] = []
        generation = self._generation
        with generation.env.begin() as txn:
            start = _key(*after) + _SEP if after else b""
            for key, record in self._contexts(txn, generation.dbs, kind, b"", start):
                namespace, context_id = key.decode().split("\x00", 1)
                items.append(self._materialise(txn, generation.dbs, namespace, context_id, record, with_turns=False))
                if len(items) == limit:
                    break
        return items

    def search(self, namespace: str, query: SearchQuery) -> SearchHits:
        """Run ``query`` in ``namespace`` in one read transaction (``mcpdb.store.search``): the ranking
        the state at that version gives, on every replica."""
        generation = self._generation
        prefix = namespace.encode() + _SEP
        with generation.env.begin() as txn:
            return search.run(
                txn,
                generation.dbs,
                generation.matrices,
                namespace,
                query,
                lambda context_id: self._get_record(txn, generation.dbs, prefix + context_id),
                lambda context_id, record: self._materialise(
                    txn, generation.dbs, namespace, context_id, record, with_turns=False
                ),
            )

    def searched(self, namespace: str, query: SearchQuery) -> int:
        """How many contexts ``query`` would look among in ``namespace``, from the search index's counters
        alone (a chat embeds its message only if there is something to rank by it)."""
        generation = self._generation
        with generation.env.begin() as txn:
            return search.counted(txn, generation.dbs[b"meta"], namespace.encode(), query)[0]

    def embedding_model(self) -> str | None:
        """The model the stored vectors were made with (None before the first): a query's vector is
        compared with them only if it comes from the same one."""
        generation = self._generation
        with generation.env.begin() as txn:
            raw = txn.get(_EMBEDDING_MODEL, db=generation.dbs[b"meta"])
        return raw.decode() if raw is not None else None

    @staticmethod
    def owners_of(user_ids: Sequence[str | None]) -> builtins.list[bytes]:
        """The owners (as the indexes spell them) of contexts of ``user_ids`` (None: of nobody)."""
        return sorted({_owner(user_id) for user_id in user_ids})

    def pending_embeddings(
        self, limit: int, after: str = ""
    ) -> builtins.list[tuple[str, str, int, str, dict[str, Any]]]:
        """(namespace, id, version, kind, fields) of up to ``limit`` contexts whose current version has no
        vector yet, in key order, all of one namespace: the first after ``after`` that has any, wrapping
        around. The leader's embedder passes the namespace it served last, so namespaces take turns: a
        tenant importing a million memories delays another's new memory by one batch, not by the import."""
        found: builtins.list[tuple[str, str, int, str, dict[str, Any]]] = []
        generation = self._generation
        with generation.env.begin() as txn:
            cursor = txn.cursor(db=generation.dbs[b"to_embed"])
            # b"\x01" sorts after the separator and before every character a namespace may hold.
            if not (after and cursor.set_range(after.encode() + b"\x01")) and not cursor.first():
                return found
            served = bytes(cursor.key()).split(_SEP, 1)[0] + _SEP
            for key, value in cursor.iternext():
                if not key.startswith(served):
                    break
                record = self._get_record(txn, generation.dbs, key)
                if record is not None:
                    namespace, context_id = key.decode().split("\x00", 1)
                    found.append((namespace, context_id, _U64.unpack(value)[0], record["kind"], record["fields"]))
                if len(found) == limit:
                    break
        return found

    def expired(self, now: float, limit: int = 1000) -> builtins.list[tuple[str, str, int]]:
        """Contexts whose TTL ran out by ``now``; the leader proposes their expiry."""
        found: builtins.list[tuple[str, str, int]] = []
        deadline = _U64.pack(int(now * 1000))
        generation = self._generation
        with generation.env.begin() as txn:
            cur = txn.cursor(db=generation.dbs[b"expiry"])
            if not cur.first():
                return found
            for key, _ in cur:
                if key[:8] > deadline or len(found) == limit:
                    break
                namespace, context_id = key[8:].decode().split("\x00", 1)
                record = self._get_record(txn, generation.dbs, key[8:])
                if record is not None:
                    found.append((namespace, context_id, record["version"]))
        return found

    def changes_after(self, version: int, position: int | None = None, limit: int = 1000) -> builtins.list[Change]:
        """Changes after ``version`` (after its change ``position`` if given), in commit order.

        Raises HistoryTrimmed when some of those changes were already trimmed.
        """
        start = _U64.pack(version) + _U32.pack(position + 1) if position is not None else _U64.pack(version + 1)
        found: builtins.list[Change] = []
        generation = self._generation
        with generation.env.begin() as txn:
            raw = txn.get(_TRIMMED, db=generation.dbs[b"meta"])
            trimmed = _U64.unpack(raw)[0] if raw else 0
            if version < trimmed:
                raise HistoryTrimmed(version, trimmed)
            cursor = txn.cursor(db=generation.dbs[b"changes"])
            if not cursor.set_range(start):
                return found
            for key, value in cursor:
                if len(found) == limit:
                    break
                namespace, context_id, kind, action = orjson.loads(value)
                found.append(
                    Change(_U64.unpack(key[:8])[0], _U32.unpack(key[8:])[0], namespace, context_id, kind, action)
                )
        return found

    def _all(self, db: bytes) -> builtins.list[dict[str, Any]]:
        generation = self._generation
        with generation.env.begin(db=generation.dbs[db]) as txn:
            return [orjson.loads(value) for _, value in txn.cursor()]

    def nodes(self) -> builtins.list[dict[str, Any]]:
        return self._all(b"nodes")

    def token(self, token_id: str) -> dict[str, Any] | None:
        generation = self._generation
        with generation.env.begin(db=generation.dbs[b"tokens"]) as txn:
            raw = txn.get(token_id.encode())
        return orjson.loads(raw) if raw is not None else None

    def tokens(self) -> builtins.list[dict[str, Any]]:
        return self._all(b"tokens")

    def count_by_kind(self) -> dict[str, int]:
        """Contexts per kind (every metrics scrape): the counts each write keeps in ``meta``, one key a kind."""
        counts: dict[str, int] = {}
        generation = self._generation
        with generation.env.begin(db=generation.dbs[b"meta"]) as txn:
            cur = txn.cursor()
            if not cur.set_range(_KIND_COUNT):
                return counts
            for key, value in cur:
                if not key.startswith(_KIND_COUNT):
                    break
                counts[key[len(_KIND_COUNT) :].decode()] = _U64.unpack(value)[0]
        return counts

    def stats(self) -> dict[str, int]:
        generation = self._generation
        with generation.env.begin() as txn:
            return {
                "contexts": txn.stat(generation.dbs[b"ctx"])["entries"],
                "turns": txn.stat(generation.dbs[b"turns"])["entries"],
                "size_bytes": generation.env.info()["last_pgno"] * generation.env.stat()["psize"],
            }

    # -------------------------------------------------------------- snapshots
    def data_file(self) -> str:
        """The current generation's LMDB data file (the disk alarm keeps space reserved past it)."""
        return os.path.join(self._generation.env.path(), snapshot.DATA_MEMBER)

    def pin_snapshot(self) -> PinnedVersion:
        """Commit what is applied and pin that version for a snapshot (the writer thread only).

        Exactly the state at the snapshot's index, by this argument: pysyncobj
        asks for a snapshot in the Raft thread, the only writer, for its last
        applied entry; every applied entry is in the group transaction, so once
        it is committed LMDB's latest version is that index (an entry being
        prepared is not applied, and not committed: ``prepare``), and the read
        transaction begun right after pins it (LMDB is MVCC). ``snapshot.write``
        copies it on another thread however long that takes and whatever
        commits meanwhile; readers and the writer are never blocked by it.
        """
        self.commit()
        generation = self._generation
        txn = generation.env.begin()
        raw = txn.get(_APPLIED, db=generation.dbs[b"meta"])
        return PinnedVersion(generation.env, txn, int(_U64.unpack(raw)[0]) if raw else 0)

    def next_generation_file(self) -> str:
        """A fresh directory for the generation an install would open next, and the path its LMDB
        file takes there: a follower copies a snapshot's data into it while the snapshot arrives
        (``snapshot.Extraction``), then installs with ``extracted=True``. Writer thread only."""
        generation = self._next_generation()
        self._discard_generation(generation)
        os.makedirs(os.path.join(self._directory, generation))
        return os.path.join(self._directory, generation, snapshot.DATA_MEMBER)

    def discard_next_generation(self) -> None:
        """Remove what ``next_generation_file`` prepared (the transfer was abandoned). Writer thread."""
        self._discard_generation(self._next_generation())

    def _discard_generation(self, generation: str) -> None:
        """Remove a generation no environment has open (a copy prepared for an install that did not
        happen): its LMDB file, gigabytes at scale, is freed gradually off this thread (one unlink of
        2 GB held a thread longer than an election timeout, see ``background_io``)."""
        directory = os.path.join(self._directory, generation)
        with contextlib.suppress(FileNotFoundError):
            background_io.retire(os.path.join(directory, snapshot.DATA_MEMBER), into=self._directory)
        shutil.rmtree(directory, ignore_errors=True)

    def _next_generation(self) -> str:
        return f"gen-{int(self._current_generation().split('-')[1]) + 1}"

    def install_snapshot(self, path: str, snapshot_index: int | None = None, extracted: bool = False) -> Any:
        """Load a snapshot; returns pysyncobj's bookkeeping stored in it.

        Keeps the live environment when it already holds the snapshot's index
        or later (a restart after compaction): the journal replay then skips
        what is applied. Otherwise the snapshot's LMDB copy becomes a new
        generation, prepared and opened beside the live one, and replaces it
        in one assignment: reads before it see the old state, reads after it
        the snapshot's, and none waits (see the module docstring). With
        ``extracted``, that copy is already in place (``next_generation_file``).
        """
        raft_data = snapshot.read_raft_data(path)
        index = snapshot_index if snapshot_index is not None else raft_data[0][1]
        self.abandon_preparation()
        self.commit()
        generation = self._next_generation()
        if self.applied_index() >= index:
            if extracted:  # the copy is not needed: this store is already past the snapshot
                self._discard_generation(generation)
            return raft_data
        old_generation = self._current_generation()
        if not extracted:
            snapshot.extract_data(path, self.next_generation_file())
        opened = self._open(generation)
        with self._swap_lock:
            self._set_current(generation)
            self._generation = opened
        # Unlinked, not truncated: a reader may still map the old generation's file (it closes with the
        # last one), and a page truncated under a mapping is a SIGBUS.
        shutil.rmtree(os.path.join(self._directory, old_generation), ignore_errors=True)
        self.snapshots_installed += 1
        return raft_data
