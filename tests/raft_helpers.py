"""Voters in the test's own process: each a Replication (a real Raft thread on a free loopback port) and
its store, with the settings such tests share (durable, no snapshot by size, no disk reserve)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pysyncobj.transport import TCPTransport

from mcpdb.ops.localcluster import free_port
from mcpdb.raft import pysyncobj_bridge
from mcpdb.raft.replication import Replication
from mcpdb.raft.settings import RaftSettings
from mcpdb.store.state_machine import ContextStore


def in_process_voter(
    root: Path, self_addr: str | None, peers: list[str], request_timeout: float = 3.0
) -> tuple[Replication, ContextStore]:
    """A voter at ``self_addr`` (None: a read-only replica of ``peers``) with its data under ``root``; the
    caller closes both."""
    store = ContextStore(str(root / "store"))
    settings = RaftSettings(
        self_addr=self_addr,
        peers=peers,
        data_dir=str(root / "raft"),
        password=None,
        durable=True,
        compaction_min_entries=10**9,
        max_entry_bytes=1 << 20,
        compaction_bytes=1 << 40,
        disk_reserve_bytes=0,
        request_timeout=request_timeout,
    )
    return Replication(settings, store), store


def wait_until(done: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``done`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@contextlib.contextmanager
def in_process_cluster(
    root: Path, size: int = 3, request_timeout: float = 3.0
) -> Iterator[list[tuple[Replication, ContextStore]]]:
    """``size`` voters of one cluster, each with its data under ``root``, once all of them know the
    leader they elected; the leader first. All are closed on leaving."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(size)]
    started: list[tuple[Replication, ContextStore]] = []
    try:
        for address in addresses:
            peers = [other for other in addresses if other != address]
            started.append(in_process_voter(root / address.replace(":", "_"), address, peers, request_timeout))
        wait_until(lambda: any(replication.is_leader() for replication, _ in started), "no leader was elected")
        wait_until(lambda: all(replication.status()["leader"] for replication, _ in started), "a voter knows no leader")
        yield sorted(started, key=lambda voter: not voter[0].is_leader())
    finally:
        for replication, store in started:
            replication.close()
            store.close()


def before_applies(
    voters: list[tuple[Replication, ContextStore]], monkeypatch: Any, before: Callable[[int, Any], None]
) -> None:
    """Call ``before(number of the voter in voters, command)`` in each voter's Raft thread before its
    store applies a command."""
    for number, (_, store) in enumerate(voters):
        apply = store.apply

        def hooked(
            index: int, command: Any, *args: Any, apply: Callable[..., Any] = apply, number: int = number, **kwargs: Any
        ) -> Any:
            before(number, command)
            return apply(index, command, *args, **kwargs)

        monkeypatch.setattr(store, "apply", hooked)


def slow_applies(
    voters: list[tuple[Replication, ContextStore]], monkeypatch: Any, seconds: float, which: Callable[[Any], bool]
) -> None:
    """Make every voter's store sleep ``seconds`` before applying a command ``which`` picks (the GIL is
    free meanwhile, as it is not in a real apply: the worst case for the other threads' timing)."""

    def sleep_if_picked(_: int, command: Any) -> None:
        if which(command):
            time.sleep(seconds)

    before_applies(voters, monkeypatch, sleep_if_picked)


def slow_preparations(
    voters: list[tuple[Replication, ContextStore]], monkeypatch: Any, seconds: float, which: Callable[[Any], bool]
) -> None:
    """Make every voter's store take ``seconds`` to prepare a bulk entry whose command ``which`` picks, in
    steps as a real bulk apply is (``ContextStore.prepare``): the Raft thread ticks between them, so it
    reads its sockets, appends and acknowledges meanwhile. A sleep before ``apply`` holds the thread
    instead, and whatever another node sent meanwhile arrives only after it."""
    for _, store in voters:
        prepare = store.prepare
        deadlines: dict[int, float] = {}

        def stepped(
            index: int,
            command: Callable[[], Any],
            step_s: float,
            *args: Any,
            prepare: Callable[..., bool] = prepare,
            deadlines: dict[int, float] = deadlines,
            **kwargs: Any,
        ) -> bool:
            decoded = command()
            if index not in deadlines and which(decoded):
                deadlines[index] = time.monotonic() + seconds
            left = deadlines.get(index, 0.0) - time.monotonic()
            if left > 0:
                time.sleep(min(step_s, left))
                return False
            return prepare(index, lambda: decoded, step_s, *args, **kwargs)

        monkeypatch.setattr(store, "prepare", stepped)


def ticked_by_hand(monkeypatch: Any, send: Callable[[Any, Any, Any], bool]) -> None:
    """Voters built after this have no Raft thread: they tick when the test calls ``doTick``; what
    their transports would put on a connection goes to ``send(transport, to, message)`` instead, and
    they open no connection."""
    conf = pysyncobj_bridge._syncobj_conf

    def manual(*args: Any, **kwargs: Any) -> Any:
        made = conf(*args, **kwargs)
        made.autoTick = False
        return made

    monkeypatch.setattr(pysyncobj_bridge, "_syncobj_conf", manual)
    monkeypatch.setattr(TCPTransport, "send", send)
    monkeypatch.setattr(TCPTransport, "_connectIfNecessary", lambda transport: None)
