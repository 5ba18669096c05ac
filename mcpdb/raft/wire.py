"""Raft messages above 64 KiB go on the wire uncompressed (zlib's stored blocks).

pysyncobj's ``TcpConnection.send`` compresses every message with zlib at level 3, in the Raft
thread. Bulk messages (a batch write's 500-context entry, once per follower; a lagging follower's
backlog; each 1 MiB snapshot chunk) cost 4-25 ms of that thread per MiB (measured: 3.7 ms on the
bench's repetitive values, 23 ms on incompressible bytes), so a snapshot streamed at disk speed
left the Raft thread no time for the writes it should commit. Level 0 is a copy (0.9 ms per
MiB) and a valid zlib stream, so every receiver, patched or not, decompresses it unchanged;
small messages (heartbeats, acknowledgements, votes) keep level 3. The cost is bandwidth on
real networks, which for a consensus log is the cheaper resource than its one thread.

pysyncobj reads ``zlib`` from its module's globals at each call, so replacing that module
attribute is the whole change; ``check_pysyncobj_version`` pins the code it was read from.
"""

from __future__ import annotations

import zlib

from pysyncobj import tcp_connection

STORED_ABOVE_BYTES = 64 << 10


class _BulkStored:
    """The part of the zlib module pysyncobj's connection uses: ``compress`` and ``decompress``."""

    decompress = staticmethod(zlib.decompress)

    @staticmethod
    def compress(data: bytes, level: int = -1) -> bytes:
        return zlib.compress(data, 0 if len(data) > STORED_ABOVE_BYTES else level)


def send_bulk_stored() -> None:
    """Make pysyncobj's connections send messages over ``STORED_ABOVE_BYTES`` uncompressed."""
    tcp_connection.zlib = _BulkStored  # duck-typed: pysyncobj calls only compress and decompress
