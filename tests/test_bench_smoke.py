"""The KV benchmark really runs: both clusters, wrk load, failover; figures are positive."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import kv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("etcd") is None,
                       reason="needs Debian's wrk and etcd-server (scripts/setup installs them as root)"),
]


def test_kv_benchmark_smoke(tmp_path: Path) -> None:
    settings = kv.KvSettings(duration_s=2, connections=6, trials=1, out=tmp_path)
    steps: list[str] = []
    results = kv.run(settings, steps.append)
    table = kv.save(results, tmp_path, "mcpdb bench kv --duration 2 --connections 6 --trials 1")
    for system in ("mcpdb", "etcd"):
        assert results[system]["writes"]["requests_per_s"] > 0
        assert results[system]["reads"]["requests_per_s"] > 0
        assert results[system]["writes"]["non_2xx"] == 0 and results[system]["reads"]["non_2xx"] == 0
        assert 0 < results[system]["failover_s"][0] < 30
    assert results["mcpdb"]["critical_truncations"] == 0
    assert "writes/s" in table and (tmp_path / "kv.png").stat().st_size > 0
    assert steps[0] == "etcd writes" and "mcpdb failover 1/1" in steps
