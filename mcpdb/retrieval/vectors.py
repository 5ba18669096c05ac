"""Vectors as the store keeps them, and exact nearest neighbours.

A vector is computed once, by the leader's embedder, and travels through the log as bytes: every
replica holds the identical vector for the same version of a context (floating point differs across
CPUs and builds, so recomputing per replica could not promise that). The bytes are the unit vector in
little-endian float16: half the log and disk of float32, and far finer than the model's own noise.
Search is exact (a matrix product over the candidates): deterministic, and fast enough at the sizes
the benchmark measures; an approximate index is worth it only if it stays deterministic.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

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


def nearest(query: bytes, candidates: Sequence[tuple[bytes, bytes]], limit: int) -> list[tuple[bytes, float]]:
    """The ``limit`` candidates most similar to ``query`` (cosine: the vectors are unit length), best
    first; ties in the candidates' order. Vectors of another length than the query's are skipped (a
    vector from another model)."""
    wanted = np.frombuffer(query, dtype=DTYPE).astype(np.float32)
    usable = [(key, blob) for key, blob in candidates if len(blob) == len(query)]
    if not usable or not wanted.size:
        return []
    stacked: npt.NDArray[np.float32] = (
        np.frombuffer(b"".join(blob for _, blob in usable), dtype=DTYPE).astype(np.float32).reshape(len(usable), -1)
    )
    # einsum's own loop, not BLAS: a threaded BLAS may split a sum differently from run to run, and
    # replicas (and repeated searches) must rank exactly alike.
    scores = np.einsum("ij,j->i", stacked, wanted)
    order = np.argsort(-scores, kind="stable")[:limit]
    return [(usable[i][0], float(scores[i])) for i in order]
