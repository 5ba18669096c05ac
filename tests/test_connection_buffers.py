"""A pysyncobj connection's linear buffers and bounded reads (``mcpdb.raft.connection_buffers``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj.encryptor import HAS_CRYPTO, getEncryptor
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import TcpConnection

from mcpdb.raft import connection_buffers
from mcpdb.raft.connection_buffers import use_linear_buffers
from mcpdb.raft.wire import frame, use_frames


class _NoPoller:
    """The poller a connection subscribes to; the tests drive its events themselves."""

    def subscribe(self, *_: Any) -> None:
        pass

    def unsubscribe(self, *_: Any) -> None:
        pass


class _End:
    """One end of a socket pair as a hooked pysyncobj connection, keeping what it received."""

    def __init__(self, sock: socket.socket, receive_size: int) -> None:
        sock.setblocking(False)
        self.received: list[Any] = []
        self.disconnected = False
        self.connection = use_linear_buffers(
            use_frames(
                TcpConnection(
                    _NoPoller(),
                    onMessageReceived=self.received.append,
                    onDisconnected=self._on_disconnected,
                    socket=sock,
                    recvBufferSize=receive_size,
                )
            )
        )

    def _on_disconnected(self) -> None:
        self.disconnected = True

    def event(self, kind: int) -> None:
        self.connection._TcpConnection__processConnection(self.connection.fileno(), kind)

    def unsent(self) -> int:
        return int(self.connection.getSendBufferSize())


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def _message(i: int, payload: bytes) -> dict[str, Any]:
    return {"type": "append_entries", "term": 1, "commit_index": i, "entries": [(payload, i, 1)]}


@settings(max_examples=30, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=5000), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=30),
    receive_size=st.integers(min_value=1, max_value=9000),
)
def test_frames_cut_anywhere_arrive_whole_and_in_order(
    payloads: list[bytes], cuts: list[int], receive_size: int
) -> None:
    left, right = socket.socketpair()
    try:
        receiver = _End(right, receive_size)
        stream = b"".join(frame(_message(i, payload)) for i, payload in enumerate(payloads))
        at = 0
        for cut in [*cuts, len(stream)]:
            piece = stream[at : at + cut]
            left.sendall(piece)
            at += len(piece)
            receiver.event(POLL_EVENT_TYPE.READ)
        while len(receiver.received) < len(payloads):
            receiver.event(POLL_EVENT_TYPE.READ)
        assert receiver.received == [_message(i, payload) for i, payload in enumerate(payloads)]
        assert not receiver.disconnected
    finally:
        left.close()
        right.close()


def test_one_read_event_takes_at_most_its_budget(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A sender that never lets the socket run dry (a leader streaming a snapshot) no longer keeps the
    receiver's Raft thread in one read event: each takes its budget, the rest waits for the next."""
    budget = 256 << 10
    monkeypatch.setattr(connection_buffers, "READ_PER_EVENT", budget)
    left, right = pair
    receiver = _End(right, 64 << 10)
    frames = [frame(_message(i, bytes([i % 251]) * (100 << 10))) for i in range(40)]  # 4 MB in all
    sender = threading.Thread(target=lambda: left.sendall(b"".join(frames)))

    def taken() -> int:  # bytes read from the socket so far: the messages parsed, and what waits unparsed
        return sum(len(f) for f in frames[: len(receiver.received)]) + len(
            receiver.connection._TcpConnection__readBuffer
        )

    sender.start()
    try:
        events = 0
        while len(receiver.received) < len(frames):
            before = taken()
            receiver.event(POLL_EVENT_TYPE.READ)
            assert taken() - before <= budget
            events += 1
    finally:
        sender.join()
    assert receiver.received == [_message(i, bytes([i % 251]) * (100 << 10)) for i in range(40)]
    assert events >= sum(len(f) for f in frames) // budget


@pytest.mark.parametrize("secret", [None, "cluster secret"] if HAS_CRYPTO else [None])
def test_partial_sends_deliver_every_message_in_order(
    pair: tuple[socket.socket, socket.socket], secret: str | None
) -> None:
    left, right = pair
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
    sender, receiver = _End(left, 1 << 20), _End(right, 1 << 20)
    if secret is not None:
        for end in (sender, receiver):
            end.connection.encryptor = getEncryptor(secret)
        sender.connection.sendRandKey = receiver.connection.recvRandKey = b"connection key"
    messages = [_message(i, bytes([i]) * (50 << 10)) for i in range(30)]
    for message in messages:
        sender.connection.send(message)
    assert sender.unsent() > 0  # the socket took only part of it
    while len(receiver.received) < len(messages):
        sender.event(POLL_EVENT_TYPE.WRITE)
        receiver.event(POLL_EVENT_TYPE.READ)
    assert receiver.received == messages
    assert sender.unsent() == 0
    assert not sender.disconnected and not receiver.disconnected


def test_a_frame_that_cannot_be_read_drops_the_connection(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    receiver = _End(right, 1 << 20)
    left.sendall(frame(_message(0, b"fine")) + (5).to_bytes(4, "little") + b"junk!")
    receiver.event(POLL_EVENT_TYPE.READ)
    assert receiver.received == [_message(0, b"fine")]
    assert receiver.disconnected
