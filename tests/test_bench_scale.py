"""`mcpdb bench scale` really runs, with a tiny N: both clusters, every phase, every reported figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import scale
from tests.conftest import run_bench

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(scale.missing_tools()), reason=f"needs etcd 3.4; as root: {scale.INSTALL}"),
]

CONTEXTS = 2000


def test_scale_benchmark_smoke(tmp_path: Path) -> None:
    args = ["--contexts", str(CONTEXTS), "--phase-seconds", "1", "--gather-runs", "3"]
    done, results = run_bench("scale", args, tmp_path, timeout=240)
    assert results["command"] == (
        f"mcpdb bench scale --contexts {CONTEXTS} --batch 500 --loaders 3 --compaction-entries 0 "
        f"--phase-seconds 1 --gather-runs 3 --out {tmp_path}"
    )
    assert f"command: {results['command']}" in done.stdout
    for name in ("mcpdb", "etcd"):
        run = results[name]
        assert set(run["phases"]) == set(scale.PHASES)
        for phase in run["phases"].values():
            probe = phase["probe"]
            assert probe["ops"] > 0 and 0 < probe["p50_ms"] <= probe["p99_ms"] <= probe["max_ms"]
            assert probe["over_250ms"] >= 0 and probe["non_2xx"] >= 0
            assert phase["leader_changes"] >= 0 and phase["term_increase"] >= 0 and phase["compactions"] >= 0
            assert 0 <= phase["start"] < phase["end"]
        load = run["phases"]["load"]
        assert load["acknowledged"] == CONTEXTS and load["lost"] == 0 and load["per_s"] > 0
        assert run["phases"]["compaction"]["completed_s"] is not None  # every member compacted
        assert run["phases"]["catch-up"]["catch_up_s"] > 0
        assert run["phases"]["restart"]["restart_s"] > 0
        assert run["phases"]["idle"]["probe"]["non_2xx"] == 0
        assert set(run["resources"]) == {"load", "compaction", "catch-up", "restart"}
        for members in run["resources"].values():
            assert len(members) == 3
            for member in members.values():
                assert member["disk_bytes"] >= member["data_bytes"] > 0
                assert member["rss"]["VmRSS"] >= member["rss"]["RssAnon"] + member["rss"]["RssFile"] > 0
        assert all(member["records"] >= CONTEXTS for member in run["resources"]["restart"].values())
        assert run["probe"] and {"compactions", "leader_changes"} <= set(run["events"])
    assert results["mcpdb"]["phases"]["compaction"]["note"]  # says whether the snapshot was forced
    for member in results["mcpdb"]["resources"]["restart"]:  # the nodes' logs outlive the run's data
        assert "leader is now" in (tmp_path / f"mcpdb-{member}.log").read_text()

    gather = results["gather"]
    assert "in-process gather()" in gather["method"]
    for label in ("empty", "loaded"):
        assert gather[label]["median_ms"] > 0 and gather[label]["runs"] >= 3
        assert gather[label]["memories"] == 5 and gather[label]["turns"] == 4  # the chat user's own, in both
    assert gather["ratio"] > 0

    rows = {row["metric"]: row for row in results["rows"]}
    judged = ["ops > 250 ms (judged)", "leader changes (judged)", "disk/data per node", "gather ms, loaded ns"]
    judged += [f"p99 ms: {name}" for name in scale.JUDGED]
    for metric in judged:
        assert rows[metric]["pass"] in (True, False), metric
    for metric in ("load records/s", "wiped follower back s", "restart to write+read s", "RSS MB per node"):
        assert rows[metric]["mcpdb"] > 0 and rows[metric]["etcd"] > 0 and rows[metric]["ratio"] > 0, metric
    assert (tmp_path / "scale.png").stat().st_size > 0 and (tmp_path / "results.md").exists()
