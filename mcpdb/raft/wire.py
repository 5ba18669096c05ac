"""How a node frames the Raft messages it sends: pickled at protocol 5, compressed only when large.

pysyncobj frames every message as ``zlib.compress(pickle.dumps(message, protocol=2), 3)``. Profiled on
the leader under the kv benchmark's writes (py-spy, samples holding the GIL), that line was about 9%
of the node's Python time: protocol 2 pickles ``bytes`` through a latin-1 ``str`` (5x slower than
protocol 5 for a batch of twenty 1 KiB entries: 21 vs 4 us), and zlib at level 3 costs about 20 us
per KiB-sized entry of text, once per follower, where a network that carries the entries gains
nothing from squeezing a few tens of KiB. Large messages (a lagging follower's backlog, batches up to
``appendEntriesBatchSizeBytes``) stay compressed as before: sent uncompressed they multiplied the
bytes queued per connection 25x at 1 M contexts (a change measured and reverted in session 9).

A snapshot's chunks (an ``append_entries`` carrying ``serialized``) are never compressed, whatever
their size: the leader frames them in its Raft thread, 1 MiB at a time at up to the snapshotter's
pace, and zlib at level 3 made that thread's work per MiB several times the rest of the send (see
benchmarks/RESULTS.md, "Three million contexts"), so writes slowed while a follower caught up. Their queue is
bounded in bytes by the snapshotter (``MAX_BACKLOG``), not by entries, so stored chunks cannot pile
up as a stored backlog of entries did. etcd likewise streams its bbolt file as it is.

The frame stays what every pysyncobj 0.3.17 receiver reads (a length, then a zlib stream of a
pickle, encrypted when the cluster has a secret): a small message is a zlib stream of stored blocks
(level 0), and ``pickle.loads`` reads any protocol. Nodes of an earlier release, which send
pysyncobj's own frames, and nodes of this one read each other's messages.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from typing import Any

from pysyncobj.monotonic import monotonic
from pysyncobj.tcp_connection import TcpConnection

PICKLE_PROTOCOL = 5
COMPRESS_FROM_BYTES = 256 << 10  # pickled size from which a message is compressed (a backlog batch)
COMPRESSION_LEVEL = 3  # pysyncobj's
FRAME_HEADER = struct.Struct("i")  # pysyncobj's frame header: native int, the encrypted or compressed length


def frame(message: Any, rand_key: Any = None, encryptor: Any = None) -> bytes:
    """The bytes that carry ``message`` on a connection, as pysyncobj's receiver parses them."""
    pickled = pickle.dumps((rand_key, message) if rand_key else message, protocol=PICKLE_PROTOCOL)
    data = zlib.compress(pickled, COMPRESSION_LEVEL if _compressed(message, len(pickled)) else 0)
    if encryptor is not None:
        data = encryptor.encrypt_at_time(data, int(monotonic()))
    return FRAME_HEADER.pack(len(data)) + data


def _compressed(message: Any, pickled_bytes: int) -> bool:
    """Whether a message of ``pickled_bytes`` is worth zlib's time: a backlog of entries, not a
    snapshot's chunk."""
    if pickled_bytes < COMPRESS_FROM_BYTES:
        return False
    return not (isinstance(message, dict) and message.get("serialized") is not None)


def use_frames(connection: TcpConnection) -> TcpConnection:
    """Make ``connection`` send with ``frame``; everything else about it stays pysyncobj's."""

    def send(message: Any) -> None:
        connection._TcpConnection__writeBuffer += frame(message, connection.sendRandKey, connection.encryptor)
        connection._TcpConnection__trySendBuffer()

    connection.send = send
    return connection
