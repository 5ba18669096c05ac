"""Raft-layer stress: pysyncobj's truncation of applied entries, stock vs guarded.

Three pysyncobj nodes in separate processes; 16 threads of ``sync=True``
1 KiB writes on the leader (the load that was measured to trigger the
truncations). Counts pysyncobj's CRITICAL "truncating already-applied log
entries" records on every node, checks that all replicas applied the same
sequence, and reports commits/s and p50 latency for each configuration.

    python -m benchmarks.raft_stress [--seconds 8]

The truncation tests reuse ``run_stress`` with a shorter run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.transport import TCPTransport

from mcpdb.ops.localcluster import free_port
from mcpdb.raft.pysyncobj_bridge import NEVER_BY_PYSYNCOBJ_COUNT, transport_class


class _Log(SyncObj):
    def __init__(self, self_addr: str, peers: list[str], conf: SyncObjConf, transport: type) -> None:
        self.applied = 0
        self.digest = 0
        super().__init__(self_addr, peers, conf, transportClass=transport)

    @replicated
    def record(self, payload: bytes) -> int:
        self.applied += 1
        self.digest = zlib.crc32(payload, self.digest)
        return self.applied


class _CriticalCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.CRITICAL)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "truncating already-applied" in record.getMessage():
            self.count += 1


SETTLE_S = 1.0  # a replica reports once it reached the leader's count and held it this long
SETTLE_MAX_S = 30.0


def _settle(node: _Log, target: Any) -> None:
    """Wait until ``node`` applied at least the leader's final count (``target``, -1 until the leader's
    writers finished) and stopped applying: a loaded machine carries the tail to a follower late, so a
    fixed pause (or a follower's own quiet spell) compared replicas mid-way."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if node.applied != last:
            last, since = node.applied, time.monotonic()
        elif 0 <= target.value <= node.applied and time.monotonic() - since >= SETTLE_S:
            return
        time.sleep(0.05)


def _node(
    addr: str, peers: list[str], guarded: bool, batch: bool, seconds: float, threads: int, target: Any, results: Any
) -> None:
    logging.basicConfig(level=logging.CRITICAL, handlers=[logging.NullHandler()])
    counter = _CriticalCounter()
    logging.getLogger("pysyncobj.syncobj").addHandler(counter)
    conf = SyncObjConf(
        appendEntriesUseBatch=batch,
        appendEntriesPeriod=0.005 if batch else 0.05,
        autoTickPeriod=0.002 if batch else 0.05,
        raftMinTimeout=1.0,
        raftMaxTimeout=2.0,
        dynamicMembershipChange=True,
        # pysyncobj's own compaction is off, as in mcpdb (which snapshots through its own serializer):
        # with it on, a lagging follower installed the leader's pickled snapshot and then reported a
        # counter 10,000 entries behind its applied index, a divergence this stress is not about.
        logCompactionMinEntries=NEVER_BY_PYSYNCOBJ_COUNT,
        logCompactionMinTime=NEVER_BY_PYSYNCOBJ_COUNT,
    )
    node = _Log(addr, peers, conf, transport_class(durable=False) if guarded else TCPTransport)
    deadline = time.monotonic() + 10
    while node._getLeader() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    acknowledged = 0
    latencies: list[float] = []
    led = node._isLeader()  # reported as is: after the writes the cluster may move on while replicas settle
    if led:
        stop = time.monotonic() + seconds
        lock = threading.Lock()

        def writer() -> None:
            nonlocal acknowledged
            mine: list[float] = []
            while time.monotonic() < stop:
                began = time.monotonic()
                try:
                    node.record(os.urandom(512).hex().encode(), sync=True, timeout=5)
                except Exception:  # noqa: BLE001 - a failed write is just not counted
                    continue
                mine.append(time.monotonic() - began)
            with lock:
                acknowledged += len(mine)
                latencies.extend(mine)

        workers = [threading.Thread(target=writer) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        time.sleep(SETTLE_S)  # entries the writers gave up on may still commit
        target.value = node.applied
    else:
        time.sleep(seconds)
    _settle(node, target)
    results.put(
        {
            "addr": addr,
            "leader": led,
            "acknowledged": acknowledged,
            "latencies": sorted(latencies),
            "critical": counter.count,
            "applied": node.applied,
            "digest": node.digest,
        }
    )
    node.destroy_synchronous()


@dataclass
class StressResult:
    commits_per_s: float
    p50_ms: float
    critical_truncations: int
    replicas_identical: bool


def run_stress(guarded: bool, batch: bool = False, seconds: float = 8.0, threads: int = 16) -> StressResult:
    """Run the stress and collect every node's report."""
    ctx = multiprocessing.get_context("spawn")
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    results = ctx.Queue()
    target = ctx.Value("q", -1)
    processes = [
        ctx.Process(
            target=_node, args=(a, [o for o in addrs if o != a], guarded, batch, seconds, threads, target, results)
        )
        for a in addrs
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=seconds + SETTLE_MAX_S + 30) for _ in processes]
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    leader = next(r for r in reports if r["leader"])
    latencies = leader["latencies"]
    return StressResult(
        commits_per_s=leader["acknowledged"] / seconds,
        p50_ms=latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        critical_truncations=sum(r["critical"] for r in reports),
        replicas_identical=len({(r["applied"], r["digest"]) for r in reports}) == 1,
    )


CONFIGURATIONS = (
    ("stock pysyncobj, unbatched", False, False),
    ("guarded (mcpdb transport), unbatched", True, False),
    ("stock pysyncobj, batched 5 ms", False, True),
)


def report(seconds: float) -> str:
    """The comparison table (markdown) for benchmarks/RESULTS.md."""
    lines = [
        "| configuration | commits/s | p50 ms | CRITICAL truncations | replicas identical |",
        "|---|---|---|---|---|",
    ]
    for label, guarded, batch in CONFIGURATIONS:
        result = run_stress(guarded, batch=batch, seconds=seconds)
        lines.append(
            f"| {label} | {result.commits_per_s:,.0f} | {result.p50_ms:.1f} | "
            f"{result.critical_truncations} | {'yes' if result.replicas_identical else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    print(report(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
