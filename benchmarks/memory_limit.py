"""Three store-only nodes, each in its own cgroup-v1 memory cgroup with a hard limit, loaded with N
1 KiB memory contexts through the batch API: does a node holding 1 M contexts run within the limit?

Root only, on a machine whose cgroup-v1 memory controller is mounted at /sys/fs/cgroup/memory. LMDB's
pages are file-backed and count towards a v1 limit, so the kernel reclaims them under it; only the
heap (memory.stat "rss") has to fit. Run: ``python -m benchmarks.memory_limit --contexts 1000000
--limit-mib 1024``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.scale import NS, load_records
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster

CGROUPS = Path("/sys/fs/cgroup/memory")
BATCH = 500
USERS = 100_000
LOADERS = 3


@contextlib.contextmanager
def memory_cgroup(name: str, limit: int) -> Iterator[Path]:
    group = CGROUPS / name
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        yield group
    finally:
        for _ in range(50):  # the processes leave when they end
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=1_000_000)
    parser.add_argument("--limit-mib", type=int, default=1024)
    args = parser.parse_args()
    layout = ClusterLayout.fresh(3)
    layout.extra_args = ["--no-inference"]
    with tempfile.TemporaryDirectory(prefix="mcpdb-memory-limit-") as directory, contextlib.ExitStack() as stack:
        # Created before the cluster, so they are removed after its processes ended.
        groups = {
            node.node_id: stack.enter_context(memory_cgroup(f"mcpdb-{node.node_id}", args.limit_mib << 20))
            for node in layout.nodes
        }
        cluster = LocalCluster(layout, Path(directory))
        cluster.start_all()
        stack.callback(cluster.stop_all, graceful=False)
        cluster.wait_ready(timeout=60)
        for node_id, group in groups.items():
            (group / "cgroup.procs").write_text(str(cluster.processes[node_id].pid))
        urls = cluster.urls()
        started = time.monotonic()
        # `mcpdb bench scale`'s loader and records (1 KiB memory contexts), from three processes.
        loaded = load_records("mcpdb", urls, args.contexts, LOADERS, BATCH, USERS)
        seconds = time.monotonic() - started
        acknowledged = loaded["acknowledged"]
        rate = acknowledged / seconds
        print(f"loaded {acknowledged:,} of {args.contexts:,} contexts in {seconds:.1f} s ({rate:,.0f}/s)")
        with httpx.Client(timeout=60) as http:
            for node, url in zip(layout.nodes, urls, strict=True):
                group = groups[node.node_id]
                stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
                listed = http.get(f"{url}/v1/namespaces/{NS}/contexts", params={"limit": 1, "kind": "memory"})
                oom = (group / "memory.oom_control").read_text().split()[-1]
                alive = cluster.processes[node.node_id].poll() is None
                print(
                    f"{node.node_id}: alive {alive}, list {listed.status_code}, "
                    f"peak {int((group / 'memory.max_usage_in_bytes').read_text()) >> 20} MiB of {args.limit_mib}, "
                    f"heap {int(stat['rss']) >> 20} MiB, page cache {int(stat['cache']) >> 20} MiB, oom kills {oom}"
                )


if __name__ == "__main__":
    main()
