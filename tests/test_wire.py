"""Raft message frames (``mcpdb.raft.wire``) as pysyncobj 0.3.17's receiver parses them."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.encryptor import HAS_CRYPTO, getEncryptor

from mcpdb.raft.wire import COMPRESS_FROM_BYTES, frame


def _received(data: bytes, encryptor: Any = None) -> Any:
    """What pysyncobj's ``TcpConnection.__processParseMessage`` makes of one frame."""
    (length,) = struct.unpack("i", data[:4])
    assert length == len(data) - 4
    body = data[4:]
    if encryptor is not None:
        body = encryptor.decrypt(body)
    return pysyncobj_pickle.loads(zlib.decompress(body))


def _append_entries(entries: list[bytes]) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": 3,
        "commit_index": 10,
        "entries": [(command, 11 + i, 3) for i, command in enumerate(entries)],
        "prevLogIdx": 10,
        "prevLogTerm": 3,
    }


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=3000), max_size=30))
def test_a_frame_reads_back_as_the_message(entries: list[bytes]) -> None:
    message = _append_entries(entries)
    assert _received(frame(message)) == message


def test_small_messages_are_stored_and_backlogs_compressed() -> None:
    # Distinct entries, as a log holds (pickle writes a repeated object once).
    small = _append_entries([b"%05d" % i + b"x" * 1024 for i in range(20)])
    large = _append_entries([b"%05d" % i + b"x" * 1024 for i in range(COMPRESS_FROM_BYTES // 1024 + 1)])
    small_frame, large_frame = frame(small), frame(large)
    assert len(small_frame) > 20 * 1024  # stored: no cheaper than its entries
    assert len(large_frame) < COMPRESS_FROM_BYTES // 20  # compressed: a run of x is almost nothing
    assert _received(large_frame) == large


@pytest.mark.skipif(not HAS_CRYPTO, reason="pysyncobj's encryption needs the cryptography package")
def test_an_encrypted_frame_carries_the_connection_key() -> None:
    encryptor = getEncryptor("cluster secret")
    message = _append_entries([b"secret entry"])
    assert _received(frame(message, rand_key=b"key", encryptor=encryptor), encryptor) == (b"key", message)
