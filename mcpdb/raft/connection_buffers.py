"""pysyncobj's connection buffers, made linear, and a read event bounded.

pysyncobj 0.3.17 keeps a connection's unread and unsent bytes in ``bytes`` objects: each ``recv`` is
appended by copying the whole unread buffer, each parsed message leaves the rest by copying it again,
each partial send copies what is still to send, and one read event reads until the socket is empty.
While a leader streamed a 6.6 GB snapshot to a wiped follower (``mcpdb bench scale --contexts 3000000``)
those copies fed on themselves: the longer the follower's read loop ran, the larger its buffer and the
slower each append, so the socket never ran dry and one read event held its Raft thread for 2.4 s and
more. The follower sent nothing meanwhile (no keepalive, no vote timer reset), its leader dropped the
silent connection after the connection timeout and began the transfer again from the first chunk, 80
times in 6.5 minutes, and the follower stood for election between them, deposing the leader 15 times.

Here the buffers are ``bytearray`` (appending and dropping a prefix are amortised: CPython moves the
array's start, and copies the rest only once it is under half the allocation), and one read event
takes at most ``READ_PER_EVENT`` bytes: the poll is
level-triggered, so what is left is read at the next tick, after the Raft thread has heartbeaten,
applied and answered. The methods replaced are pysyncobj's own, on each connection instance, with the
same behaviour otherwise (disconnect on a socket error, an undecodable frame or a wrong key).
"""

from __future__ import annotations

import errno
import socket
import zlib
from typing import Any

from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.monotonic import monotonic
from pysyncobj.tcp_connection import TcpConnection

from mcpdb.raft.wire import FRAME_HEADER

READ_PER_EVENT = 8 << 20  # bytes one read event takes from a socket at most
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)
_READ = "_TcpConnection__readBuffer"
_WRITE = "_TcpConnection__writeBuffer"


class _WrongFrame(Exception):
    """A frame that is out of order or carries another key: pysyncobj drops the connection."""


def _bytearray(connection: TcpConnection, name: str) -> bytearray:
    """The connection's buffer ``name`` as a bytearray (pysyncobj resets it to ``bytes()`` on every
    connect and disconnect)."""
    buffer = getattr(connection, name)
    if not isinstance(buffer, bytearray):
        buffer = bytearray(buffer)
        setattr(connection, name, buffer)
    return buffer


def _read(connection: TcpConnection, size: int) -> int:
    """One ``recv`` into the read buffer: the bytes read, 0 when there were none (or the connection
    closed or failed, and was disconnected)."""
    sock: socket.socket = connection._TcpConnection__socket
    try:
        incoming = sock.recv(size)
    except OSError as error:
        if error.errno not in _WOULD_BLOCK:
            connection.disconnect()
        return 0
    if not incoming or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        connection.disconnect()
        return 0
    _bytearray(connection, _READ).extend(incoming)
    return len(incoming)


def _parse(connection: TcpConnection) -> Any:
    """The next whole message in the read buffer, removed from it; None if there is none yet (or the
    frame could not be read, and the connection was dropped)."""
    buffer = _bytearray(connection, _READ)
    if len(buffer) < FRAME_HEADER.size:
        return None
    (length,) = FRAME_HEADER.unpack_from(buffer)
    end = FRAME_HEADER.size + length
    if len(buffer) < end:
        return None
    with memoryview(buffer) as view:  # released before the prefix is dropped below
        data = bytes(view[FRAME_HEADER.size : end])
    try:
        if connection.encryptor:
            timestamp = connection.encryptor.extract_timestamp(data)
            if timestamp < connection.recvLastTimestamp:
                raise _WrongFrame("a frame older than the last one")
            connection.recvLastTimestamp = timestamp
            data = connection.encryptor.decrypt(data)
        message = pysyncobj_pickle.loads(zlib.decompress(data))
        if connection.recvRandKey:
            rand_key, message = message
            if rand_key != connection.recvRandKey:
                raise _WrongFrame("a frame under another key")
    except Exception:  # noqa: BLE001 - as pysyncobj: whatever cannot be read ends the connection
        connection.disconnect()
        return None
    del buffer[:end]
    return message


def _send(connection: TcpConnection) -> bool:
    """One ``send`` from the write buffer; True if it sent something (there may be more)."""
    buffer = _bytearray(connection, _WRITE)
    if not buffer:
        return False
    try:
        sent = connection._TcpConnection__socket.send(buffer)
    except OSError as error:
        if error.errno not in _WOULD_BLOCK:
            connection.disconnect()
        return False
    if sent <= 0:
        return False
    del buffer[:sent]
    return True


def use_linear_buffers(connection: TcpConnection) -> TcpConnection:
    """Give ``connection`` the reads, parsing and sends above; everything else stays pysyncobj's."""
    size = connection._TcpConnection__recvBufferSize

    def read_event() -> None:  # pysyncobj's __tryReadBuffer, bounded
        taken = 0
        while taken < READ_PER_EVENT:
            got = _read(connection, min(size, READ_PER_EVENT - taken))
            if not got:
                break
            taken += got
        connection._TcpConnection__lastReadTime = monotonic()

    connection._TcpConnection__tryReadBuffer = read_event
    connection._TcpConnection__processParseMessage = lambda: _parse(connection)
    connection._TcpConnection__processSend = lambda: _send(connection)
    return connection
