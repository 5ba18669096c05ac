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


def nearest(
    query: bytes, candidates: Iterable[tuple[bytes, bytes]], limit: int
) -> tuple[list[tuple[bytes, float]], int]:
    """The ``limit`` candidates most similar to ``query`` (cosine: the vectors are unit length), best
    first, ties in the candidates' order; and how many candidates there were. Vectors of another length
    than the query's are skipped (a vector from another model).

    Scored ``BLOCK`` at a time, keeping the best ``limit`` so far: a namespace-wide search over a million
    vectors holds one block's matrix (10 MB at 640 dimensions), not the namespace's (2.5 GB in float32).
    Each row's dot product is the same whichever block it is in, and the best are chosen by (score,
    position), so the ranking is the one a single product over every candidate gives."""
    wanted = np.frombuffer(query, dtype=DTYPE).astype(np.float32)
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
        stacked: npt.NDArray[np.float32] = (
            np.frombuffer(b"".join(blob for _, _, blob in usable), dtype=DTYPE)
            .astype(np.float32)
            .reshape(len(usable), -1)
        )
        # einsum's own loop, not BLAS: a threaded BLAS may split a sum differently from run to run, and
        # replicas (and repeated searches) must rank exactly alike.
        scores = np.concatenate([kept_scores, np.einsum("ij,j->i", stacked, wanted)])
        positions = np.concatenate([kept_positions, np.fromiter((p for p, _, _ in usable), dtype=np.int64)])
        keys = kept_keys + [key for _, key, _ in usable]
        order = np.lexsort((positions, -scores))[:limit]  # by score, best first, then position
        kept_keys = [keys[i] for i in order]
        kept_scores, kept_positions = scores[order], positions[order]
    return [(key, float(score)) for key, score in zip(kept_keys, kept_scores, strict=True)], seen
