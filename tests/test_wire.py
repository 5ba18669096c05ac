"""Raft message frames (``mcpdb.raft.wire``) as pysyncobj 0.3.17's receiver parses them."""

from __future__ import annotations

import functools
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.encryptor import HAS_CRYPTO, getEncryptor
from pysyncobj.tcp_connection import TcpConnection

from mcpdb.ops.localcluster import free_port
from mcpdb.raft.pysyncobj_bridge import transport_class
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


def test_a_snapshot_chunk_is_stored_whatever_its_size() -> None:
    # pysyncobj's leader sends a chunk as an append_entries carrying ``serialized`` (data, first, last).
    chunk = {"type": "append_entries", "term": 3, "commit_index": 10, "serialized": (b"x" * (1 << 20), True, False)}
    chunk_frame = frame(chunk)
    assert len(chunk_frame) > 1 << 20  # stored, though a run of x would compress to almost nothing
    assert _received(chunk_frame) == chunk
    last = {**chunk, "serialized": (b"", False, True)}
    assert _received(frame(last)) == last


@pytest.mark.skipif(not HAS_CRYPTO, reason="pysyncobj's encryption needs the cryptography package")
def test_an_encrypted_frame_carries_the_connection_key() -> None:
    encryptor = getEncryptor("cluster secret")
    message = _append_entries([b"secret entry"])
    assert _received(frame(message, rand_key=b"key", encryptor=encryptor), encryptor) == (b"key", message)


class _Counter(SyncObj):
    def __init__(self, address: str, others: list[str], password: str | None) -> None:
        conf = SyncObjConf(autoTick=False, password=password, connectionRetryTime=0.1)
        super().__init__(address, others, conf, transportClass=transport_class(durable=False))
        self.value = 0

    @replicated
    def add(self, amount: int) -> int:
        self.value += amount
        return self.value


@pytest.mark.parametrize("password", [None, "cluster secret"] if HAS_CRYPTO else [None])
def test_every_connection_of_a_cluster_sends_frames(monkeypatch: pytest.MonkeyPatch, password: str | None) -> None:
    """Three nodes over loopback elect, replicate, lose every connection and reconnect; a send through
    pysyncobj's own framing, or a read through its own buffers (a connection the transport did not
    hook), fails the test."""
    unhooked: list[Any] = []
    monkeypatch.setattr(TcpConnection, "send", lambda connection, message: unhooked.append(message))
    for method in ("__tryReadBuffer", "__processParseMessage", "__processSend"):
        monkeypatch.setattr(TcpConnection, "_TcpConnection" + method, lambda *_, name=method: unhooked.append(name))
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = [_Counter(address, [a for a in addresses if a != address], password) for address in addresses]
    try:

        def tick_until(done: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 20
            while not done():
                assert time.monotonic() < deadline, "the cluster did not get there in time"
                for node in nodes:
                    node.doTick(0.01)

        def all_hold(value: int) -> bool:
            return all(node.value == value for node in nodes)

        for round_ in range(2):
            tick_until(lambda: any(node._isLeader() for node in nodes))
            leader = next(node for node in nodes if node._isLeader())
            leader.add(1)
            tick_until(functools.partial(all_hold, round_ + 1))
            for node in nodes:  # every connection drops; pysyncobj reconnects with the same objects
                for connection in list(node._SyncObj__transport._connections.values()):
                    connection.disconnect()
    finally:
        for node in nodes:
            node._destroy()
    assert unhooked == []
