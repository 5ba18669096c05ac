"""A tenant's reads with its own scoped token while another tenant bulk-loads, beside the bootstrap
token's reads of the same context in the same run (the anchor: no token check at all).

Three ``--no-inference`` nodes with a bootstrap token; three loader processes post 500-record batches
of 1 KiB contexts into namespace ``bulk`` as fast as they are acknowledged; one probe process reads
``tenant-a/k`` every 20 ms, rotating over the nodes, alternately with a token scoped to ``tenant-a``
and with the bootstrap token. A scoped token's check is a linearizable read of the token store; the
question is what it adds to a read while Raft threads are busy with another tenant's batches.

    python -m benchmarks.tenant_reads [--seconds 40] [--out benchmarks/results/tenant-reads.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.stats import percentile
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster

BOOTSTRAP = "tenant-reads-bootstrap-token"
LOADERS = 3
RECORDS_PER_BATCH = 500
PROBE_PERIOD_S = 0.02
BATCH_BODY_LIMIT = 2 << 20
FILLER = "lorem ipsum dolor sit amet " * 36  # about 1 KiB of words the search index takes


def _load(url: str, loader: int, stop_at: float) -> None:
    """Batches of 1 KiB memory contexts into ``bulk`` until ``stop_at``."""
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    with httpx.Client(headers=headers, timeout=30) as http:
        batch = 0
        while time.time() < stop_at:
            ops = [
                {
                    "op": "put",
                    "id": f"l{loader}-{batch}-{n}",
                    "context": {"kind": "memory", "user_id": f"u{n % 50}", "facts": [f"fact {batch} {n} {FILLER}"]},
                }
                for n in range(RECORDS_PER_BATCH)
            ]
            http.post(f"{url}/v1/namespaces/bulk/batch", json={"ops": ops})
            batch += 1


def _probe(urls: list[str], scoped: str, stop_at: float, results: Any) -> None:
    """Reads of tenant-a/k, alternately with the scoped and the bootstrap token: latencies in ms (None
    for a read that did not answer 200)."""
    latencies: dict[str, list[float | None]] = {"scoped token": [], "bootstrap token": []}
    tokens = {"scoped token": scoped, "bootstrap token": BOOTSTRAP}
    with httpx.Client(timeout=30) as http:
        turn = 0
        while time.time() < stop_at:
            label = "scoped token" if turn % 2 == 0 else "bootstrap token"
            began = time.perf_counter()
            response = http.get(
                f"{urls[turn % len(urls)]}/v1/namespaces/tenant-a/contexts/k",
                headers={"Authorization": f"Bearer {tokens[label]}"},
            )
            latencies[label].append(1000 * (time.perf_counter() - began) if response.status_code == 200 else None)
            turn += 1
            time.sleep(PROBE_PERIOD_S)
    results.put(latencies)


def _summary(latencies: list[float | None]) -> dict[str, Any]:
    answered = [latency for latency in latencies if latency is not None]
    return {
        "reads": len(latencies),
        "failed": len(latencies) - len(answered),
        "p50_ms": percentile(answered, 0.5),
        "p99_ms": percentile(answered, 0.99),
        "max_ms": max(answered, default=None),
        "over_250_ms": sum(latency > 250 for latency in answered),
    }


def run(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mcpdb-tenant-reads-") as tmp:
        layout = ClusterLayout.fresh(3)
        layout.extra_args = ["--no-inference", "--max-body-bytes", str(BATCH_BODY_LIMIT)]
        cluster = LocalCluster(layout, Path(tmp), token=BOOTSTRAP)
        try:
            cluster.start_all()
            cluster.wait_ready()
            urls = cluster.urls()
            root = {"Authorization": f"Bearer {BOOTSTRAP}"}
            scoped = httpx.post(f"{urls[0]}/v1/tokens", json={"scopes": {"tenant-a": "read"}}, headers=root, timeout=10)
            context = {"kind": "memory", "facts": ["the tenant's context"]}
            httpx.put(f"{urls[0]}/v1/namespaces/tenant-a/contexts/k", json=context, headers=root, timeout=10)
            stop_at = time.time() + seconds
            results: Any = multiprocessing.Queue()
            processes = [multiprocessing.Process(target=_load, args=(urls[n % 3], n, stop_at)) for n in range(LOADERS)]
            token = scoped.raise_for_status().json()["token"]
            processes.append(multiprocessing.Process(target=_probe, args=(urls, token, stop_at, results)))
            for process in processes:
                process.start()
            latencies = results.get(timeout=seconds + 60)
            for process in processes:
                process.join(60)
        finally:
            cluster.stop_all(graceful=False)
    rows = {label: _summary(values) for label, values in latencies.items()}
    scoped_p50, anchor_p50 = rows["scoped token"]["p50_ms"], rows["bootstrap token"]["p50_ms"]
    return {
        "command": f"python -m benchmarks.tenant_reads --seconds {seconds:g}",
        "rows": rows,
        "p50_ratio": scoped_p50 / anchor_p50 if scoped_p50 and anchor_p50 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the results here (JSON)")
    args = parser.parse_args()
    results = run(args.seconds)
    for label, row in results["rows"].items():
        print(
            f"{label:16s} reads {row['reads']:4d}  failed {row['failed']}  p50 {row['p50_ms']:.1f} ms  "
            f"p99 {row['p99_ms']:.1f} ms  max {row['max_ms']:.1f} ms  over 250 ms {row['over_250_ms']}"
        )
    print(f"scoped / bootstrap p50: {results['p50_ratio']:.2f}x")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
