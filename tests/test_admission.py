"""The bounded queue in front of searches and query embeddings, and the embedder's order of work.

- ``Admission``: ``running`` at once, ``waiting`` queued, the next refused at once with 503 overloaded
  and Retry-After, and a slot freed by a holder that failed; one key (a namespace) holds at most its
  share, so another key still gets in while the first floods it.
- The embedder (the bundled model) runs one text at a time and a waiting query goes before the
  background's next text; once closed it refuses.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mcpdb.admission import Admission
from mcpdb.errors import Overloaded
from mcpdb.inference.llama_worker import default_model_path
from mcpdb.retrieval.embedding import Embedder


def test_running_then_waiting_then_refused_at_once() -> None:
    async def scenario() -> tuple[list[str], int]:
        gate = Admission(2, 3, "searches")
        release = asyncio.Event()
        outcomes: list[str] = []

        async def hold(name: str) -> None:
            try:
                async with gate.slot():
                    await release.wait()
                    outcomes.append(name)
            except Overloaded as refused:
                assert refused.status == 503 and refused.fields()["retry_after"] >= 1
                assert "2 searches with 3 waiting" in str(refused)
                outcomes.append(f"{name} refused")

        tasks = [asyncio.create_task(hold(f"r{i}")) for i in range(7)]
        await asyncio.sleep(0.05)
        queued = gate.queued
        release.set()
        await asyncio.gather(*tasks)
        return outcomes, queued

    outcomes, queued = asyncio.run(scenario())
    assert queued == 3
    assert sorted(o for o in outcomes if o.endswith("refused")) == ["r5 refused", "r6 refused"]
    assert sorted(o for o in outcomes if not o.endswith("refused")) == [f"r{i}" for i in range(5)]


def test_one_key_holds_at_most_its_share_and_another_still_gets_in() -> None:
    async def scenario() -> list[str]:
        gate = Admission(1, 4, "query embeddings", per_key=2)
        release = asyncio.Event()
        outcomes: list[str] = []

        async def hold(key: str, name: str) -> None:
            try:
                async with gate.slot(key):
                    await release.wait()
                    outcomes.append(name)
            except Overloaded as refused:
                assert "its share" in str(refused)
                outcomes.append(f"{name} refused")

        flood = [asyncio.create_task(hold("namespace a", f"a{i}")) for i in range(30)]
        await asyncio.sleep(0.05)
        other = asyncio.create_task(hold("namespace b", "b0"))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*flood, other)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert sorted(o for o in outcomes if not o.endswith("refused")) == ["a0", "a1", "b0"]
    assert len([o for o in outcomes if o.endswith("refused")]) == 28


def test_a_holder_that_fails_frees_its_slot() -> None:
    async def scenario() -> None:
        gate = Admission(1, 0, "searches")
        with pytest.raises(ValueError):
            async with gate.slot():
                raise ValueError("boom")
        async with gate.slot():
            with pytest.raises(Overloaded):  # one running, none may wait
                async with gate.slot():
                    pass

    asyncio.run(scenario())


def test_a_waiting_query_goes_before_the_backgrounds_next_text_and_a_closed_model_refuses() -> None:
    """The bundled model embeds eight contexts in the background (seconds); a query asked meanwhile
    is answered while they are still going, not after them. Once closed, a caller gets an error at
    once rather than waiting forever (a worker thread that never ends holds up the node's exit)."""
    embedder = Embedder(default_model_path(), threads=2)
    try:
        background = threading.Thread(target=embedder.embed, args=([f"context number {i}" for i in range(8)],))
        background.start()
        time.sleep(0.1)  # the first context is on the model
        embedder.embed_query("what is the query")
        assert background.is_alive(), "the query waited for every background text"
        background.join()
    finally:
        embedder.close()
    with pytest.raises(RuntimeError, match="closed"):
        embedder.embed_query("asked after the node shut its model")
