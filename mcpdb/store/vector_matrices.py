"""A namespace's vectors as one float32 matrix in memory, for searches over every owner: exact and bounded.

A search of a whole namespace (no ``user_id``) compares the query with every vector in scope. Read from
LMDB a cursor step at a time, that costs ~3 us a vector in Python and the float16 -> float32 conversion
(0.33 s at 100,000 memories); the same rows as one float32 matrix answer with one product (~12 ms at
100,000 x 384). The matrix is a by-product of the scan: a search that finds none at its version scans as
before (``vectors.nearest``, a block at a time) and keeps the blocks it converted, if they fit.

The matrix is used only while it is exactly what the searching read transaction holds: the state machine
counts each namespace's vector changes in the transaction that makes them (``meta``: ``vectors_changed
\0 ns``; ``vectors_epoch`` for a change of model, which drops every vector; every write to the
``vectors`` database that changes what a scan reads must count one), the search reads the count in its
own transaction, and a matrix answers only for the count it was built at. So a search ranks what the
state at its version holds, as the scan would, and the same on every replica (``vectors.nearest_rows``
ranks as ``vectors.nearest``: property tests against the scan).

Kept per store generation (a snapshot install starts afresh), least recently used out first within
``max_bytes`` (keys counted); a namespace whose rows do not fit is scanned every time, holding one block
at a time, and ``max_bytes`` 0 keeps nothing. A change to a namespace's vectors makes its next search scan
again, so the matrix pays where a namespace is searched more often than its vectors change (an
application's shared knowledge, a settled import); under a stream of new memories each search costs a
scan, as before. One user's memories (a chat's recall) are few and always scanned.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np
import numpy.typing as npt

from mcpdb.retrieval import vectors

VECTORS_EPOCH = b"vectors_epoch"  # meta -> U64: changes of model (every vector dropped)
_VECTORS_CHANGED = b"vectors_changed\x00"  # meta, + namespace -> U64: changes of that namespace's vectors


def changed_key(namespace: bytes) -> bytes:
    return _VECTORS_CHANGED + namespace


def _count(txn: lmdb.Transaction, meta: Any, key: bytes) -> int:
    raw = txn.get(key, db=meta)
    return int.from_bytes(raw, "big") if raw is not None else 0


def count_change(txn: lmdb.Transaction, meta: Any, key: bytes) -> None:
    """In the writing transaction: one more change under ``key`` (``changed_key(ns)`` or ``VECTORS_EPOCH``)."""
    txn.put(key, (_count(txn, meta, key) + 1).to_bytes(8, "big"), db=meta)


def _version(txn: lmdb.Transaction, meta: Any, namespace: bytes) -> tuple[int, int]:
    """The version of a namespace's vectors that ``txn`` reads: (changes of model, changes of the namespace)."""
    return _count(txn, meta, VECTORS_EPOCH), _count(txn, meta, changed_key(namespace))


@dataclass(frozen=True)
class _Matrix:
    version: tuple[int, int]
    keys: list[bytes]
    rows: npt.NDArray[np.float32]
    candidates: int  # every vector in scope, of any length (``nearest``'s count)
    nbytes: int  # rows and keys


class VectorMatrices:
    """The matrices of one store generation; safe for the store's reader threads."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._held: OrderedDict[tuple[bytes, tuple[str, ...], int], _Matrix] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(matrix.nbytes for matrix in self._held.values())

    def nearest(
        self,
        txn: lmdb.Transaction,
        meta: Any,
        namespace: bytes,
        kinds: Sequence[str],
        query: bytes,
        scan: Callable[[], Iterable[tuple[bytes, bytes]]],
        limit: int,
    ) -> tuple[list[tuple[bytes, float]], int]:
        """What ``vectors.nearest(query, scan(), limit)`` gives in ``txn``: from the namespace's matrix if
        there is one at the version ``txn`` reads, else from the scan (keeping its rows if they fit)."""
        version = _version(txn, meta, namespace)
        key = (namespace, tuple(sorted(kinds)), len(query))
        with self._lock:
            held = self._held.get(key)
            if held is not None and held.version == version:
                self._held.move_to_end(key)
        if held is not None and held.version == version:
            return vectors.nearest_rows(query, held.keys, held.rows, limit), held.candidates
        kept = vectors.KeptRows(self._max_bytes)
        ranking, candidates = vectors.nearest(query, scan(), limit, kept)
        if kept.complete:
            self._keep(key, _Matrix(version, kept.keys, kept.matrix(len(query)), candidates, kept.nbytes))
        return ranking, candidates

    def _keep(self, key: tuple[bytes, tuple[str, ...], int], matrix: _Matrix) -> None:
        with self._lock:
            held = self._held.get(key)
            if held is not None and held.version > matrix.version:  # a search of an older version finished last
                return
            self._held[key] = matrix
            self._held.move_to_end(key)
            while sum(kept.nbytes for kept in self._held.values()) > self._max_bytes:
                self._held.popitem(last=False)
