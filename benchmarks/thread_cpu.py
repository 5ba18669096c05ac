"""Where a node's CPU goes under the kv benchmark's load, thread by thread.

Starts the kv benchmark's 3-node mcpdb cluster (durable, no inference), runs one wrk scenario for
``--seconds`` and prints each node's CPU per acknowledged request, split between the HTTP event
loop (the main thread) and every other thread that used any (the Raft thread first among them),
from /proc through psutil: user and system time, so time a thread waits (fsync, poll) is not
counted, unlike a sampling profiler's view. Also each node's journal fsyncs per request (from
``/v1/cluster``): with the disk's latency they decide how many writes share one, and each costs
kernel CPU the node is billed for.

    python -m benchmarks.thread_cpu [--scenario mcpdb_put|mcpdb_get] [--seconds 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import httpx
import psutil

from benchmarks import wrk
from benchmarks.systems import Mcpdb

CONNECTIONS = 32
SHOWN_FROM_S = 0.05  # threads that used less are not listed


def thread_times(pid: int) -> dict[int, float]:
    """CPU seconds (user and system) of each thread of process ``pid``."""
    return {thread.id: thread.user_time + thread.system_time for thread in psutil.Process(pid).threads()}


def journal_syncs(url: str) -> dict[str, int]:
    """Each node's journal fsyncs so far."""
    nodes = httpx.get(url + "/v1/cluster", timeout=10).raise_for_status().json()["nodes"]
    return {node["id"]: node["journal_syncs"] for node in nodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="mcpdb_put", choices=["mcpdb_put", "mcpdb_get"])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcpdb-threads-") as tmp, Mcpdb(Path(tmp) / "mcpdb", "durable") as mcpdb:
        leader = mcpdb.leader()
        pids = {name: process.pid for name, process in mcpdb.cluster.processes.items()}
        syncs_before = journal_syncs(mcpdb.urls()[0])
        before = {name: thread_times(pid) for name, pid in pids.items()}
        load = wrk.run(mcpdb.urls(), args.scenario, CONNECTIONS, args.seconds)
        after = {name: thread_times(pid) for name, pid in pids.items()}
        syncs = {name: count - syncs_before[name] for name, count in journal_syncs(mcpdb.urls()[0]).items()}
    print(f"{args.scenario}, {CONNECTIONS} connections, {args.seconds:g} s: {load.ok_per_s:,.0f} acknowledged/s")
    for name, pid in pids.items():
        used = {tid: seconds - before[name].get(tid, 0.0) for tid, seconds in after[name].items()}
        total = sum(used.values())
        print(
            f"{name}{' (leader)' if name == leader else ''}: {1e6 * total / load.ok:,.0f} us CPU per request, "
            f"{syncs[name] / load.ok:.2f} journal fsyncs per request"
        )
        for tid, seconds in sorted(used.items(), key=lambda item: -item[1]):
            if seconds >= SHOWN_FROM_S:
                label = "HTTP event loop" if tid == pid else f"thread {tid}"
                print(f"    {label:16s} {1e6 * seconds / load.ok:6,.0f} us per request")


if __name__ == "__main__":
    main()
