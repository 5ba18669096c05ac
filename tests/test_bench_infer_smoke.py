"""`mcpdb bench infer` really runs, in smoke mode: raw anchor, every policy's cluster, the figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.infer import CpuQuotas
from tests.conftest import run_bench

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (CpuQuotas.ROOT / "cgroup.procs").exists(), reason="needs the cgroup v1 cpu controller"),
]


def test_infer_benchmark_smoke(tmp_path: Path) -> None:
    args = [
        "--requests",
        "2",
        "--max-tokens",
        "4",
        "--sessions",
        "2",
        "--turns",
        "2",
        "--weighted-requests",
        "4",
        "--rounds",
        "2",
    ]
    done, results = run_bench("infer", args, tmp_path, timeout=420)
    assert f"command: {results['command']}" in done.stdout
    throughput = results["throughput"]
    assert len(throughput["raw_rounds"]) == len(throughput["mcpdb_rounds"]) == 2 and throughput["tokens_per_round"] > 0
    assert min(throughput["raw_rounds"]) > 0 and min(throughput["mcpdb_rounds"]) > 0
    assert throughput["round_ratios"] == [
        mine / raw for mine, raw in zip(throughput["mcpdb_rounds"], throughput["raw_rounds"], strict=True)
    ]
    assert f"(rounds {min(throughput['round_ratios']):.2f}-" in (tmp_path / "results.md").read_text()
    for policy in ("affinity", "round_robin"):
        assert len(results["affinity"][policy]["requests"]) == 4
    for policy in ("weighted", "round_robin"):
        assert len(results["weighted"][policy]["requests"]) == 4
    assert (tmp_path / "infer.png").stat().st_size > 0 and (tmp_path / "results.md").exists()
    assert not list(CpuQuotas.ROOT.glob("mcpdb-bench-*")), "cgroups left behind"
