"""A namespace's vectors as one float32 matrix in memory, for searches over every owner: exact and bounded.

A search of a whole namespace (no ``user_id``) compares the query with every vector in scope. Read from
LMDB a cursor step at a time, that costs ~3 us a vector in Python and the float16 -> float32 conversion
(0.33 s at 100,000 memories); a matrix of the same rows, built once by the same scan, answers with one
product (~12 ms at 100,000 x 384). The matrix is used only while it is exactly what the searching read
transaction holds: the state machine counts each namespace's vector changes in the transaction that
makes them (``meta``: ``vectors_changed \\0 ns``; ``vectors_epoch`` for a change of model, which drops
every vector), the search reads the count in its own transaction, and a matrix answers only for the
count it was built at. So a search ranks what the state at its version holds, as the scan would, and
the same on every replica (``vectors.nearest_rows`` ranks as ``vectors.nearest``: a property test).

Kept per store generation (a snapshot install starts afresh), least recently used out first within
``max_bytes``; a namespace bigger than that is scanned every time. A write to the namespace's vectors
makes the next search rebuild its matrix, so the matrix pays off for namespaces searched more often than
their vectors change (an application's shared knowledge, a settled import), not under a stream of new
memories; one user's memories (a chat's recall) are few and always scanned.
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
_KEY_OVERHEAD = 100  # bytes a row's key costs beside its vector (the bytes object, the list slot)


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

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes) + _KEY_OVERHEAD * len(self.keys)


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
        """What ``vectors.nearest(query, scan(), limit)`` gives in ``txn``, from the namespace's matrix
        (built from ``scan`` if there is none at the version ``txn`` reads)."""
        version = _version(txn, meta, namespace)
        key = (namespace, tuple(sorted(kinds)), len(query))
        with self._lock:
            held = self._held.get(key)
            if held is not None and held.version == version:
                self._held.move_to_end(key)
        if held is None or held.version != version:
            held = self._build(version, scan, len(query))
            self._keep(key, held)
        return vectors.nearest_rows(query, held.keys, held.rows, limit), held.candidates

    @staticmethod
    def _build(version: tuple[int, int], scan: Callable[[], Iterable[tuple[bytes, bytes]]], size: int) -> _Matrix:
        keys: list[bytes] = []
        blobs: list[bytes] = []
        candidates = 0
        for context_id, blob in scan():
            candidates += 1
            if len(blob) == size:
                keys.append(context_id)
                blobs.append(blob)
        rows = vectors.as_matrix(blobs) if blobs else np.empty((0, size // vectors.DTYPE.itemsize), np.float32)
        return _Matrix(version, keys, rows, candidates)

    def _keep(self, key: tuple[bytes, tuple[str, ...], int], matrix: _Matrix) -> None:
        if matrix.nbytes > self._max_bytes:
            return
        with self._lock:
            self._held[key] = matrix
            self._held.move_to_end(key)
            while sum(held.nbytes for held in self._held.values()) > self._max_bytes:
                self._held.popitem(last=False)
