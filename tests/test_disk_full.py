"""A full disk raises the disk alarm: writes get 507, reads keep working, nothing acknowledged is lost,
no node dies, and writes resume by themselves once space returns.

Three real node processes keep their data on one small tmpfs this test mounts (root only, as CI
runs); a filler file takes the free space, so the nodes run out while they take writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mcpdb.ops.localcluster import LocalCluster
from tests.conftest import mounted_tmpfs, start_cluster

pytestmark = pytest.mark.integration

RESERVE = 8 << 20
DEADLINE_S = 60.0  # bounds a failure only


def _fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    stats = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def _batch(start: int) -> dict:
    ops = [
        {"op": "put", "id": f"m{start + i}", "context": {"kind": "memory", "facts": ["x" * 1000]}} for i in range(50)
    ]
    return {"ops": ops}


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _write_until_refused(cluster: LocalCluster, acknowledged: list[str]) -> httpx.Response:
    urls = cluster.urls()
    began, position = time.monotonic(), 0
    with httpx.Client(timeout=10) as http:
        while time.monotonic() - began < DEADLINE_S:
            url = urls[position % len(urls)]
            response = http.post(f"{url}/v1/namespaces/d/batch", json=_batch(position * 50))
            if response.status_code == 200:
                acknowledged.extend(op["id"] for op in _batch(position * 50)["ops"])
            elif response.status_code == 507:
                return response
            else:
                assert response.status_code == 503, response.text  # forwarded to a leader that refused
            position += 1
    raise AssertionError("no 507 within the deadline")


def test_a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "160m") as disk:
        cluster = start_cluster(disk, extra_args=["--disk-reserve-bytes", str(RESERVE)])
        try:
            filler = _fill(disk, leave=4 << 20)
            acknowledged: list[str] = []
            refused = _write_until_refused(cluster, acknowledged)
            body = refused.json()
            assert body["error"] == "insufficient_storage" and "disk" in body["message"]
            assert refused.headers["Retry-After"].isdigit()

            alarmed = [
                n.node_id for n in cluster.layout.nodes if (cluster.node_status(n.node_id) or {}).get("disk_alarm")
            ]
            assert alarmed, "no node reports its disk alarm"
            url = cluster.spec(alarmed[0]).url
            ready = httpx.get(f"{url}/readyz")
            assert ready.status_code == 503 and "disk alarm" in ready.json()["reason"]
            assert _metric(url, "mcpdb_disk_alarm") == 1.0
            shown = subprocess.run(
                [sys.executable, "-m", "mcpdb.cli", "status", "--url", url],
                capture_output=True,
                text=True,
                env={**os.environ, "COLUMNS": "200"},
                timeout=30,
            )
            assert shown.returncode == 0 and f"disk alarm on {alarmed[0]}" in shown.stdout, shown.stdout
            # Reads keep working, linearizable ones included, and see every acknowledged write.
            for context_id in acknowledged[:: max(1, len(acknowledged) // 20)]:
                read = httpx.get(f"{url}/v1/namespaces/d/contexts/{context_id}", timeout=10)
                assert read.status_code == 200, read.text
            assert all(cluster.running(n.node_id) for n in cluster.layout.nodes), "a node died of the full disk"

            filler.unlink()
            began = time.monotonic()
            while True:
                statuses = [cluster.node_status(n.node_id) or {} for n in cluster.layout.nodes]
                if all(s.get("disk_alarm") is False for s in statuses):
                    break
                assert time.monotonic() - began < DEADLINE_S, statuses
                time.sleep(0.2)
            for spec in cluster.layout.nodes:
                written = httpx.post(f"{spec.url}/v1/namespaces/d/batch", json=_batch(10_000_000), timeout=10)
                assert written.status_code == 200, written.text
            listed = 0
            cursor = None
            while True:
                params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                page = httpx.get(f"{url}/v1/namespaces/d/contexts", params=params, timeout=10).json()
                listed += len(page["items"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert listed >= len(acknowledged) + 50  # nothing acknowledged was lost
        finally:
            cluster.stop_all(graceful=False)


def _reason(cluster: LocalCluster, node_id: str) -> str:
    try:
        return str(httpx.get(f"{cluster.spec(node_id).url}/readyz", timeout=2).json().get("reason", ""))
    except httpx.HTTPError:
        return ""


def test_a_follower_refuses_a_snapshot_its_disk_cannot_hold_and_takes_it_once_it_can(tmp_path: Path) -> None:
    """A wiped follower on a small disk is sent a snapshot bigger than half its free space: it refuses
    it at the first chunk (the alarm names the snapshot), stays up, and installs it once the disk grows."""
    cluster = start_cluster(tmp_path, extra_args=["--disk-reserve-bytes", str(RESERVE)])
    try:
        leader = cluster.wait_ready()
        follower = next(n.node_id for n in cluster.layout.nodes if n.node_id != leader)
        cluster.stop(follower)
        node_dir = cluster.data_dir / follower
        subprocess.run(["rm", "-rf", str(node_dir)], check=True)
        with mounted_tmpfs(node_dir, "48m"):
            with httpx.Client(timeout=30) as http:
                url = cluster.spec(leader).url
                for start in range(0, 20_000, 500):  # about 30 MB of store: its snapshot and copy need 60
                    ops = [
                        {
                            "op": "put",
                            "id": f"s{start + i}",
                            "context": {"kind": "memory", "facts": [f"{i:05d}" + "x" * 1000]},
                        }
                        for i in range(500)
                    ]
                    http.post(f"{url}/v1/namespaces/d/batch", json={"ops": ops}).raise_for_status()
                snapped = http.post(f"{url}/v1/node/snapshot", headers={"Content-Type": "application/json"})
                assert snapped.status_code == 200 and snapped.json()["written"], snapped.text
            cluster.start(follower)
            began = time.monotonic()
            while "snapshot" not in _reason(cluster, follower):
                assert cluster.running(follower), "the follower died instead of refusing the snapshot"
                assert time.monotonic() - began < DEADLINE_S, _reason(cluster, follower)
                time.sleep(0.2)
            assert "disk alarm" in _reason(cluster, follower)
            subprocess.run(["mount", "-o", "remount,size=400m", str(node_dir)], check=True)
            cluster.wait_ready(timeout=DEADLINE_S, nodes=[follower])
            read = httpx.get(f"{cluster.spec(follower).url}/v1/namespaces/d/contexts/s19999", timeout=10)
            assert read.status_code == 200 and read.json()["facts"][0].startswith("00499"), read.text
            cluster.stop_all(graceful=False)  # before the tmpfs goes
    finally:
        cluster.stop_all(graceful=False)
