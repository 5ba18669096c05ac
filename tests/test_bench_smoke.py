"""`mcpdb bench kv` really runs, in smoke mode: both clusters, wrk load, a failover trial each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import kv
from tests.conftest import run_bench

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(kv.missing_tools()), reason=f"needs wrk and etcd 3.4; as root: {kv.INSTALL}"),
]


def test_kv_benchmark_smoke(tmp_path: Path) -> None:
    args = ["--duration", "2", "--connections", "6", "--trials", "1"]
    done, results = run_bench("kv", args, tmp_path, timeout=240)
    assert (
        results["command"] == f"mcpdb bench kv --duration 2 --connections 6 --trials 1 --durability durable "
        f"--out {tmp_path}"
    )
    assert f"command: {results['command']}" in done.stdout
    for system in ("mcpdb", "etcd"):
        for load in ("writes", "reads"):
            assert results[system][load]["ok_per_s"] > 0
            assert 0 < results[system][load]["cpu_s_per_member"] < 2 * 2  # two cores, a 2 s load
        assert results[system]["failover_s"][0] is not None
    assert results["mcpdb"]["findings"]["critical_truncations"] == 0
    assert {row["metric"] for row in results["rows"]} >= {
        "writes/s (2xx)",
        "linearizable reads/s (2xx)",
        "write p99 ms",
        "read p99 ms",
        "failover s (max of 1)",
        "CPU s per 1,000 writes per node",
    }
    assert (tmp_path / "kv.png").stat().st_size > 0 and (tmp_path / "results.md").exists()


def test_index_cost_benchmark_smoke(tmp_path: Path) -> None:
    done, results = run_bench("index", ["--contexts", "1000"], tmp_path, timeout=120)
    assert results["command"] == f"mcpdb bench index --contexts 1000 --out {tmp_path}"
    for corpus in ("facts", "random", "opaque"):
        measured = results["corpora"][corpus]
        assert measured["mcpdb"]["contexts_per_s"] > 0 and measured["fts5"]["contexts_per_s"] > 0
        assert measured["mcpdb"]["bytes"] > 0 and measured["ratio"] > 0
        assert measured["mcpdb"]["user_search_ms"] > 0 and measured["fts5"]["user_search_ms"] > 0
    assert (tmp_path / "index.png").stat().st_size > 0


def test_retrieval_benchmark_smoke(tmp_path: Path) -> None:
    args = ["--users", "1", "--sizes", "100", "--queries", "3", "--chat-users", "1", "--chat-filler", "20"]
    args += ["--freshness-seconds", "2", "--live-chat-users", "1", "--live-long-exchanges", "2"]
    done, results = run_bench("retrieval", args, tmp_path, timeout=480)
    assert results["command"] == f"mcpdb bench {' '.join(['retrieval', *args])} --out {tmp_path}"
    quality = results["quality"]
    assert {"lexical", "vector", "hybrid", "fts5 (anchor)", "brute-force cosine (ceiling)"} <= set(quality)
    for name, figures in quality.items():
        assert set(figures) == {"all", "paraphrase", "direct", "named"}, name
        assert 0 <= figures["all"]["recall@1"] <= figures["all"]["recall@5"] <= 1, name
    assert quality["lexical"]["direct"]["recall@5"] > 0.9  # a word of the fact finds it
    assert quality["lexical"]["named"]["recall@1"] > 0.9  # so does the record's name
    assert quality["vector"]["all"] == quality["brute-force cosine (ceiling)"]["all"]  # exact search
    for chat in results["chats"].values():
        assert 0 <= chat["reached_all_or_nothing"] <= 1 and chat["reached_recall"] > 0
        assert 0 < chat["cached_share"]["follow_up"]["mean"] <= 1
    latency = results["sizes"]["100"]["latency"]
    assert all(figures["p99_ms"] >= figures["p50_ms"] > 0 for figures in latency.values())
    assert (tmp_path / "retrieval.png").stat().st_size > 0 and "fts5" in done.stdout
    idle = results["freshness"]["0"]  # three real nodes, nothing else writing: every probe is embedded
    for namespace in ("bulk", "quiet"):
        assert idle[namespace]["probes"] >= 2 and idle[namespace]["not_found"] == 0
        assert 0 < idle[namespace]["p50_s"] <= idle[namespace]["max_s"] < 10
    assert set(results["freshness"]) == {"0", "50", "500"} and "vector-searchable" in done.stdout
    live = results["live_chats"]["100"]  # one user's conversation on a real node, the model replying
    assert live["reply_tokens"] > 0 and 0 < live["follow_up"]["min"] <= live["follow_up"]["mean"] <= 1
    assert "KV cache held" in done.stdout
    assert live["long"]["exchanges"] == 2 and "past the window" in done.stdout  # two exchanges fit the window


def _run_module(module: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m module ARGS`` as a user runs it (scratch files under ``tmp_path``); must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_thread_cpu_smoke(tmp_path: Path) -> None:
    done = _run_module("benchmarks.thread_cpu", ["--seconds", "1"], tmp_path)
    assert done.stdout.count("us CPU per request") == 3 and "(leader)" in done.stdout
    assert done.stdout.count("HTTP event loop") == 3


def test_tenant_reads_smoke(tmp_path: Path) -> None:
    out = tmp_path / "tenant-reads.json"
    done = _run_module("benchmarks.tenant_reads", ["--seconds", "3", "--out", str(out)], tmp_path)
    assert "scoped / bootstrap p50:" in done.stdout
    results = json.loads(out.read_text())
    for row in results["rows"].values():
        assert row["reads"] > 10 and row["failed"] == 0 and row["p50_ms"] > 0


def test_snapshot_install_smoke(tmp_path: Path) -> None:
    done = _run_module("benchmarks.snapshot_install", ["--contexts", "3000"], tmp_path)
    assert "Raft thread held by the" in done.stdout and "command: python -m benchmarks.snapshot_install" in done.stdout


def test_flood_benchmark_smoke(tmp_path: Path) -> None:
    """A short flood: every safety row holds (no unsafe answer, no wrong copy, no stale read)."""
    done, results = run_bench("flood", ["--seconds", "3", "--attackers", "12"], tmp_path, timeout=240)
    assert results["command"] == f"mcpdb bench flood --seconds 3 --attackers 12 --processes 2 --out {tmp_path}"
    rows = {row["metric"]: row for row in results["rows"]}
    for judged in ("answers neither 2xx nor 503 applied:no", "batches wrong on some node", "stale linearizable reads"):
        assert rows[judged]["pass"], rows[judged]
    assert rows["flood batches accepted"]["mcpdb"] > 0 and rows["tenant batches/s"]["etcd"] > 0
    hog = results["copies"]["hog"]
    assert all(node["batches"] == hog["answered_200"] for node in hog["nodes"])
    assert (tmp_path / "flood.png").stat().st_size > 0 and (tmp_path / "results.md").exists()
