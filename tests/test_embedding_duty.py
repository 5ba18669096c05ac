"""The embedding duty yields to chats: background vectors never take a generating node's cores,
but a queue waits at most ``MAX_YIELD_S`` under continuous chat load. With an empty queue it waits for
the next commit (a write that may have queued a context), not for a timer."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from mcpdb.node import embedding_duty
from mcpdb.node.embedding_duty import MAX_YIELD_S, EmbeddingDuty
from mcpdb.store.changes import ChangeFeed


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _duty(idle: list[bool]) -> EmbeddingDuty:
    unused: Any = None
    return EmbeddingDuty(unused, unused, unused, lambda: None, chats_idle=lambda: idle[0])


def test_an_idle_node_embeds_at_once() -> None:
    assert not _duty([True])._yields_to_chats()


def test_a_busy_node_waits_then_embeds_one_round_per_max_yield(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(embedding_duty.time, "monotonic", clock.monotonic)
    idle = [False]
    duty = _duty(idle)
    assert duty._yields_to_chats()
    clock.now += MAX_YIELD_S - 1
    assert duty._yields_to_chats()
    clock.now += 1
    assert not duty._yields_to_chats()  # one round under continuous load
    assert duty._yields_to_chats()  # then it waits again
    clock.now += MAX_YIELD_S / 2
    idle[0] = True
    assert not duty._yields_to_chats()
    idle[0] = False
    clock.now += 1
    assert duty._yields_to_chats()  # a pause in the chats restarts the wait


class _Leader:
    def is_leader(self) -> bool:
        return True


def test_an_empty_queue_waits_for_the_next_commit_not_the_idle_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_duty, "IDLE_S", 3600.0)  # only a commit can end the wait in this test
    feed = ChangeFeed(store=None)  # type: ignore[arg-type]
    embedder: Any = object()
    duty = EmbeddingDuty(None, _Leader(), None, lambda: embedder, next_commit=feed.next_commit)  # type: ignore[arg-type]
    monkeypatch.setattr(duty, "_cluster_reads_vectors", lambda: True)
    rounds: list[int] = []

    async def empty_round(_: Any) -> int:
        rounds.append(1)
        return 0

    monkeypatch.setattr(duty, "round", empty_round)

    async def scenario() -> None:
        task = asyncio.create_task(duty.run())
        while not rounds:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert len(rounds) == 1  # waiting, with an hour's timer
        threading.Thread(target=feed.on_commit).start()  # the Raft thread commits
        await asyncio.wait_for(_until(lambda: len(rounds) == 2), timeout=10)
        task.cancel()

    asyncio.run(scenario())


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)
