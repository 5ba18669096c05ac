"""Vectors as the store keeps them, and exact nearest neighbours.

A vector is computed once, by the leader's embedder, and travels through the log as bytes: every
replica holds the identical vector for the same version of a context (floating point differs across
CPUs and builds, so recomputing per replica could not promise that). The bytes are the unit vector in
little-endian float16: half the log and disk of float32, and far finer than the model's own noise.
Search is exact (a product over the candidates, a block at a time): deterministic, and fast enough for
one user's memories at the sizes the benchmark measures (a namespace-wide scan of a million vectors
takes seconds); an approximate index is worth it only if it stays deterministic.
"""

from __future__ import annotations

import base64
import itertools
import struct
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

DTYPE = np.dtype("<f2")
MAX_BYTES = 16 << 10  # 8,192 dimensions: more than any embedding model mcpdb would run
VERSION = struct.Struct(">Q")  # a stored vector's value: the context version it was computed for, then the bytes


def pack(vector: Sequence[float]) -> bytes:
    """The stored bytes of ``vector``: normalised to unit length (a zero vector stays zero), float16."""
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return (array / norm if norm else array).astype(DTYPE).tobytes()


def to_text(blob: bytes) -> str:
    """A vector's bytes as a log command carries them (JSON has no bytes)."""
    return base64.b64encode(blob).decode()


def checked(text: str) -> bytes | None:
    """The bytes of a vector as a command carries them, or None if they are no vector (not base64, empty,
    an odd length, or longer than ``MAX_BYTES``): every replica decides the same from the same text."""
    try:
        blob = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return blob if 0 < len(blob) <= MAX_BYTES and len(blob) % DTYPE.itemsize == 0 else None


BLOCK = 4096  # candidates scored at a time: a search's memory follows the block, not the namespace


def _scores(matrix: npt.NDArray[np.float32], wanted: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # einsum's own loop, not BLAS: a threaded BLAS may split a sum differently from run to run, and
    # replicas (and repeated searches) must rank exactly alike. Each row's sum is the same whatever
    # other rows the matrix holds, so a block and a whole namespace's matrix score a row alike.
    return np.einsum("ij,j->i", matrix, wanted)


def as_matrix(blobs: Sequence[bytes]) -> npt.NDArray[np.float32]:
    """Stored vectors of one length as the rows of a float32 matrix."""
    return np.frombuffer(b"".join(blobs), dtype=DTYPE).astype(np.float32).reshape(len(blobs), -1)


def _query(query: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(query, dtype=DTYPE).astype(np.float32)


class KeptRows:
    """The usable rows a scan converted, kept while they fit ``budget`` bytes (keys included): a whole
    namespace's matrix as a by-product of the scan that ranks it, at no extra conversion."""

    _KEY_COST = 57  # bytes a key costs beside its length (the bytes object and its list slot)

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._spent = 0
        self.keys: list[bytes] = []
        self._blocks: list[npt.NDArray[np.float32]] = []
        self.complete = budget > 0  # False once something did not fit: nothing is kept

    def add(self, keys: list[bytes], block: npt.NDArray[np.float32]) -> None:
        if not self.complete:
            return
        self._spent += int(block.nbytes) + sum(self._KEY_COST + len(key) for key in keys)
        if self._spent > self._budget:
            self.complete, self.keys, self._blocks = False, [], []
            return
        self.keys += keys
        self._blocks.append(block)

    @property
    def nbytes(self) -> int:
        return self._spent

    def matrix(self, size: int) -> npt.NDArray[np.float32]:
        """The kept rows as one matrix (``size``: the vectors' length in bytes)."""
        if not self._blocks:
            return np.empty((0, size // DTYPE.itemsize), dtype=np.float32)
        return np.concatenate(self._blocks)


class Spread:
    """The mean and standard deviation of every score a scan computed: how far above the typical candidate
    a hit stands (a chat recalls by meaning only what stands out, ``gather``), whatever the model's scale."""

    def __init__(self) -> None:
        self._count = 0
        self._sum = self._squares = 0.0

    def add(self, scores: npt.NDArray[np.float32]) -> None:
        wide = scores.astype(np.float64)
        self._count += len(wide)
        self._sum += float(wide.sum())
        self._squares += float((wide * wide).sum())

    def mean_std(self) -> tuple[float, float] | None:
        """(mean, standard deviation), None without scores."""
        if not self._count:
            return None
        mean = self._sum / self._count
        return mean, max(0.0, self._squares / self._count - mean * mean) ** 0.5


def nearest(
    query: bytes,
    candidates: Iterable[tuple[bytes, bytes]],
    limit: int,
    kept: KeptRows | None = None,
    spread: Spread | None = None,
) -> tuple[list[tuple[bytes, float]], int]:
    """The ``limit`` candidates most similar to ``query`` (cosine: the vectors are unit length), best
    first, ties in the candidates' order; and how many candidates there were. Vectors of another length
    than the query's are skipped (a vector from another model).

    Scored ``BLOCK`` at a time, keeping the best ``limit`` so far: a namespace-wide search over a million
    vectors holds one block's matrix (10 MB at 640 dimensions), not the namespace's (2.5 GB in float32).
    Each row's dot product is the same whichever block it is in, and the best are chosen by (score,
    position), so the ranking is the one a single product over every candidate gives. ``kept``, if
    given, receives each block's usable rows, ``spread`` each block's scores."""
    wanted = _query(query)
    kept_keys: list[bytes] = []
    kept_scores = np.empty(0, dtype=np.float32)
    kept_positions = np.empty(0, dtype=np.int64)
    seen = 0
    remaining = iter(candidates)
    while block := list(itertools.islice(remaining, BLOCK)):  # itertools.batched is Python 3.12's
        usable = [(seen + offset, key, blob) for offset, (key, blob) in enumerate(block) if len(blob) == len(query)]
        seen += len(block)
        if not usable or not wanted.size:
            continue
        rows = as_matrix([blob for _, _, blob in usable])
        if kept is not None:
            kept.add([key for _, key, _ in usable], rows)
        block_scores = _scores(rows, wanted)
        if spread is not None:
            spread.add(block_scores)
        scores = np.concatenate([kept_scores, block_scores])
        positions = np.concatenate([kept_positions, np.fromiter((p for p, _, _ in usable), dtype=np.int64)])
        keys = kept_keys + [key for _, key, _ in usable]
        order = np.lexsort((positions, -scores))[:limit]  # by score, best first, then position
        kept_keys = [keys[i] for i in order]
        kept_scores, kept_positions = scores[order], positions[order]
    return [(key, float(score)) for key, score in zip(kept_keys, kept_scores, strict=True)], seen


def nearest_rows(
    query: bytes, keys: Sequence[bytes], matrix: npt.NDArray[np.float32], limit: int
) -> list[tuple[bytes, float]]:
    """``nearest`` over vectors already in a matrix (row i is ``keys[i]``'s, the rows in candidate order,
    all of the query's length): one product, the same scores and the same order (score, then row)."""
    if not len(keys) or not matrix.shape[1] or limit < 1:
        return []
    scores = _scores(matrix, _query(query))
    return [(keys[i], float(scores[i])) for i in _best_rows(scores, limit)]


def _best_rows(scores: npt.NDArray[np.float32], limit: int) -> npt.NDArray[np.intp]:
    """The rows of the ``limit`` best scores, best first, ties by row, NaN last: what sorting every row
    by (-score, row) gives, after a partition has set aside all but those that can make the cut."""
    finite = ~np.isnan(scores)
    rows = np.flatnonzero(finite)
    if len(rows) > limit:
        values = scores[rows]
        cut = np.partition(values, len(values) - limit)[len(values) - limit]  # the limit-th best score
        rows = rows[values >= cut]  # it and every row tying with it
    best = rows[np.lexsort((rows, -scores[rows]))]
    if len(best) < limit:
        best = np.concatenate([best, np.flatnonzero(~finite)[: limit - len(best)]])
    return best[:limit]
