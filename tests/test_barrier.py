"""ReadBarrier: concurrent reads share read-index requests made after they arrived."""

from __future__ import annotations

import asyncio

import pytest

from mcpdb.raft.barrier import ReadBarrier


def test_reads_of_one_iteration_share_one_request_made_after_all_arrived() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        seen_waiting: list[int] = []

        async def confirm(timeout: float, namespace: str | None) -> int:
            seen_waiting.append(barrier.reads)
            await asyncio.sleep(0)
            return 42

        barrier = ReadBarrier(confirm, timeout=1)
        results = await asyncio.gather(*(barrier.wait() for _ in range(5)))
        return results, seen_waiting

    results, seen = asyncio.run(scenario())
    assert results == [42] * 5
    assert seen == [5]  # one request, issued once all five reads were queued


def test_a_read_arriving_later_gets_its_own_request() -> None:
    async def scenario() -> list[int]:
        issued = 0

        async def confirm(timeout: float, namespace: str | None) -> int:
            nonlocal issued
            issued += 1
            mine = issued
            await asyncio.sleep(0.01)
            return mine

        barrier = ReadBarrier(confirm, timeout=1)
        first = asyncio.create_task(barrier.wait())
        await asyncio.sleep(0.001)  # the first request is in flight
        second = await barrier.wait()
        return [await first, second]

    assert asyncio.run(scenario()) == [1, 2]


def test_a_failure_reaches_every_read_of_the_batch() -> None:
    async def scenario() -> list[BaseException | int]:
        async def confirm(timeout: float, namespace: str | None) -> int:
            raise RuntimeError("no quorum")

        barrier = ReadBarrier(confirm, timeout=1)
        return await asyncio.gather(*(barrier.wait() for _ in range(3)), return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)


@pytest.mark.parametrize("reads", [1, 50])
def test_counters(reads: int) -> None:
    async def scenario() -> ReadBarrier:
        async def confirm(timeout: float, namespace: str | None) -> int:
            return 1

        barrier = ReadBarrier(confirm, timeout=1)
        await asyncio.gather(*(barrier.wait() for _ in range(reads)))
        return barrier

    barrier = asyncio.run(scenario())
    assert barrier.reads == reads and barrier.batches == 1


def test_reads_of_one_iteration_share_a_request_per_namespace() -> None:
    async def scenario() -> tuple[list[int], list[str | None]]:
        asked: list[str | None] = []

        async def confirm(timeout: float, namespace: str | None) -> int:
            asked.append(namespace)
            await asyncio.sleep(0)
            return {None: 1, "a": 2, "b": 3}[namespace]

        barrier = ReadBarrier(confirm, timeout=1)
        reads = [barrier.wait("a"), barrier.wait(), barrier.wait("b"), barrier.wait("a"), barrier.wait()]
        results = await asyncio.gather(*reads)
        return results, asked

    results, asked = asyncio.run(scenario())
    assert results == [2, 1, 3, 2, 1]
    assert sorted(asked, key=str) == sorted(["a", None, "b"], key=str)  # one request each
