"""`mcpdb bench infer` really runs, in smoke mode: raw anchor, every policy's cluster, the figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.infer import CpuQuotas

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
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "mcpdb.cli", "bench", "infer", *args],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert f"command: {results['command']}" in done.stdout
    assert results["throughput"]["raw_tokens"] > 0 and results["throughput"]["mcpdb_tokens"] > 0
    for policy in ("affinity", "round_robin"):
        assert len(results["affinity"][policy]["requests"]) == 4
    for policy in ("weighted", "round_robin"):
        assert len(results["weighted"][policy]["requests"]) == 4
    assert (tmp_path / "infer.png").stat().st_size > 0 and (tmp_path / "results.md").exists()
    assert not list(CpuQuotas.ROOT.glob("mcpdb-bench-*")), "cgroups left behind"
