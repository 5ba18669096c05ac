"""Failover: time from kill -9 of the leader to the next acknowledged write.

A client writes continuously through the surviving members, open loop: a
new write every PROBE_INTERVAL_S, whatever happened to the ones before.
A closed loop (each writer waiting for its last answer) measures its own
timeout instead: writes sent just before a new leader is elected hang
until the client gives up, so every writer retries at the same moment and
the figure comes out as a multiple of the client timeout (etcd gave
exactly 2.03 s that way, every trial). Open loop, the resolution is the
probe interval.

Only writes *sent* after the killed process was reaped count: an ack for a
request the old leader may have handled would make failover look instant.
The figure runs from the kill signal to the first such ack.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from benchmarks.systems import System

PROBE_INTERVAL_S = 0.02
REQUEST_TIMEOUT_S = 3.0
# Writes flow this long before the kill. A kill right after a (re)start finds every Raft connection
# freshly used; a cluster that has run a while may not (pysyncobj drops a peer link idle for 3.5 s
# on its next send: mcpdb's transport sends keepalives so the first vote request is not lost).
STEADY_S = 5.0
GIVE_UP_S = 30.0


def trial(system: System) -> float | None:
    """Kill the leader under a continuous write load; seconds to the next ack, None if none in GIVE_UP_S.

    The killed member is restarted (and the cluster ready again) before returning.
    """
    leader = system.leader()
    survivors = [url for url in system.urls() if url != system.url(leader)]
    seconds = asyncio.run(_measure(system, leader, survivors))
    system.restart(leader)
    return seconds


async def _measure(system: System, leader: str, survivors: list[str]) -> float | None:
    acks: list[tuple[float, float]] = []  # (sent, acknowledged), monotonic
    recovered = asyncio.Event()
    dead_at = float("inf")

    async def probe(http: httpx.AsyncClient, url: str, key: str) -> None:
        sent = time.monotonic()
        try:
            acknowledged = await system.write(http, url, key)
        except httpx.HTTPError:
            return
        if acknowledged:
            acks.append((sent, time.monotonic()))
            if sent >= dead_at:
                recovered.set()

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=len(survivors) * 4)
    probes: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:

        async def write_continuously() -> None:
            for n in itertools.count():
                task = asyncio.create_task(probe(http, survivors[n % len(survivors)], f"failover-{n % 100}"))
                probes.add(task)
                task.add_done_callback(probes.discard)
                await asyncio.sleep(PROBE_INTERVAL_S)

        writer = asyncio.create_task(write_continuously())
        try:
            await asyncio.sleep(STEADY_S)
            if not acks:
                raise RuntimeError(f"{system.name}: no write acknowledged before the kill")
            killed = time.monotonic()
            await asyncio.to_thread(system.kill, leader)
            dead_at = time.monotonic()
            try:
                await asyncio.wait_for(recovered.wait(), GIVE_UP_S)
            except TimeoutError:
                pass
        finally:  # the answer is in; writes still in flight do not matter
            for task in (writer, *probes):
                task.cancel()
            await asyncio.gather(writer, *probes, return_exceptions=True)
    after = [acked for sent, acked in acks if sent >= dead_at]
    return min(after) - killed if after else None
