"""The embedding duty yields to chats: background vectors never take a generating node's cores,
but a queue waits at most ``MAX_YIELD_S`` under continuous chat load."""

from __future__ import annotations

from typing import Any

import pytest

from mcpdb.node import embedding_duty
from mcpdb.node.embedding_duty import MAX_YIELD_S, EmbeddingDuty


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
