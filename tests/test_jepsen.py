"""The fault-injection harness end to end: every nemesis finds no anomaly, and it catches a broken node.

Each run starts a real cluster (in network namespaces when the machine
allows it), drives both workloads through the REST API while the nemesis
injects faults, heals, reads every key from every node and checks the
history. ``--unsafe-stale-reads`` makes nodes answer reads from local state:
under a partition the harness must report it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jepsen_like import report
from jepsen_like.nemesis import NEMESES
from jepsen_like.netlab import availability
from jepsen_like.runner import RunConfig, run

pytestmark = pytest.mark.integration

NO_NETWORK = availability()


def _config(tmp_path: Path, nemeses: list[str], **overrides) -> RunConfig:
    base = dict(
        nemeses=nemeses,
        workloads=["register", "list-append"],
        time_s=20,
        concurrency=6,
        fault_s=4,
        heal_s=3,
        out=tmp_path / "run",
        seed=7,
    )
    base.update(overrides)
    return RunConfig(**base)


# Every nemesis, three to a run, in turn (one fault window each, the first again at the end): a cluster
# and its checks cost about ten seconds beside the faults, so nine separate runs cost a CI minute and a half
# more for the same windows. The windows name their nemesis, so a failure still says which fault it was.
SHORT_PASS_GROUPS = {
    "processes": ["kill", "pause", "crash"],
    "network": ["partition", "partition-leader", "bridge"],
    "degraded": ["slow", "lossy", "membership"],
}
assert sorted(n for group in SHORT_PASS_GROUPS.values() for n in group) == sorted(NEMESES)


def _runnable(nemeses: list[str]) -> list[str]:
    """The nemeses this machine can run (those needing network namespaces only where it has them)."""
    if not NO_NETWORK:
        return nemeses
    return [n for n in nemeses if not NEMESES[n].needs_network]


# The process faults meet a store that is not empty and snapshots being written: each window also forces
# a snapshot on every node (``--preload``/``--compact``; ``mcpdb jepsen`` runs them at a million contexts).
# The network faults meet another namespace's batches being applied, which reads of one namespace skip.
AT_SCALE: dict[str, dict[str, Any]] = {
    "processes": dict(preload=20_000, compact=True),
    "network": dict(background_load=True),
}


@pytest.mark.parametrize("group", sorted(SHORT_PASS_GROUPS))
def test_short_pass_finds_no_anomaly(tmp_path: Path, group: str) -> None:
    nemeses = _runnable(SHORT_PASS_GROUPS[group])
    if not nemeses:
        pytest.skip(f"{group} needs network namespaces: {NO_NETWORK}")
    window_s = 4 + 3  # _config's fault and heal, after a first heal
    scale = AT_SCALE.get(group, {})
    result = run(_config(tmp_path, nemeses, time_s=3 + window_s * (len(nemeses) + 1), **scale))
    summary = report.write(result, tmp_path / "run")
    assert {w.nemesis for w in result.windows} - {"compact"} == set(nemeses), "a nemesis never struck"
    assert set(summary["recovery_s"]) <= set(nemeses) and summary["recovery_s"]  # the last heal may be cut short
    if scale.get("background_load"):
        assert summary["background_batches"] > 0
        assert summary["reads_served_ahead"] > 0  # reads did skip another namespace's entries, under faults
    if scale.get("preload"):
        assert summary["preloaded"] == 20_000
        forced = [w for w in result.windows if w.nemesis == "compact"]
        assert len(forced) == summary["compactions"] >= len(nemeses)
        assert any("MiB in" in w.detail for w in forced), [w.detail for w in forced]  # a snapshot was written
    assert summary["acknowledged"] > 50
    assert summary["anomalies"] == 0, result.checks
    assert result.valid, summary["verdicts"]
    for name in ("history.jsonl", "results.json", "latency.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_unsafe_stale_reads_are_caught(tmp_path: Path) -> None:
    nemesis = "partition-leader" if not NO_NETWORK else "pause"
    stale = dict(unsafe_stale_reads=True, concurrency=8, fault_s=6, heal_s=2)
    result = run(_config(tmp_path, [nemesis], workloads=["register"], **stale))
    assert not result.valid, "stale reads went unnoticed"
    assert result.checks["register"]["valid"] is False


@pytest.mark.skipif(NO_NETWORK is not None, reason=f"needs network namespaces: {NO_NETWORK}")
def test_membership_changes_during_partitions(tmp_path: Path) -> None:
    """Voters removed (and re-added wiped) while partitions come and go: pysyncobj's
    membership changes, including ones proposed on the cut-off side, keep every promise."""
    result = run(_config(tmp_path, ["partition", "membership"], combined=True, time_s=24, seed=3))
    assert any(w.nemesis == "membership" for w in result.windows)
    assert result.valid, result.checks


def test_chat_under_faults_loses_and_duplicates_no_turn(tmp_path: Path) -> None:
    """Chat requests with the real model while nodes die and the leader is cut off (in turn): every
    acknowledged message is in every replica once, with its reply, generated from fresh context."""
    nemeses = _runnable(["kill", "partition-leader"])
    result = run(_config(tmp_path, nemeses, workloads=["chat"], concurrency=4, time_s=27, fault_s=5, heal_s=4))
    summary = report.write(result, tmp_path / "run")
    assert {w.nemesis for w in result.windows} == set(nemeses), "a nemesis never struck"
    assert summary["acknowledged"] > 20
    assert result.valid, result.checks
    assert {"chat", "chat-messages", "chat-messages-final"} <= set(result.checks)
