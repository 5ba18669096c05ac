"""Shared fixtures: real node processes on loopback with free ports.

Every cluster a test starts is killed at teardown, pass or fail, and each
node runs in its own process group, so nothing outlives the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpdb.ops.localcluster import ClusterLayout, LocalCluster

# Every node the suite starts (clusters, jepsen runs, `mcpdb up`) inherits this: the default 64 MiB
# reserved ahead of each journal and store is real allocated disk, about 25 GB over the whole suite.
# The disk-full tests pass their own --disk-reserve-bytes.
os.environ.setdefault("MCPDB_DISK_RESERVE_BYTES", str(4 << 20))


def start_cluster(
    tmp_path: Path,
    size: int = 3,
    extra_args: list[str] | None = None,
    token: str | None = None,
    inference: bool = False,
    env: dict[str, str] | None = None,
    embedding: bool = False,
) -> LocalCluster:
    """Store-only nodes unless ``inference``: loading a model per node is for the tests about it; an
    embedding model too only with ``embedding`` (the leader embeds every memory written otherwise)."""
    layout = ClusterLayout.fresh(size)
    layout.extra_args = (extra_args or []) + ([] if inference else ["--no-inference"])
    if inference and not embedding:
        layout.extra_args.append("--no-embedding")
    cluster = LocalCluster(layout, tmp_path / "cluster", token=token, env=env)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=30)
    except BaseException:
        cluster.stop_all(graceful=False)
        raise
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh, ready 3-voter cluster."""
    running = start_cluster(tmp_path)
    try:
        yield running
    finally:
        running.stop_all(graceful=False)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One ready 3-voter cluster for the tests of a module that neither stop nor fault a node, each in a
    namespace of its own (a cluster's start costs seconds; a test that changes the cluster takes ``cluster``)."""
    running = start_cluster(tmp_path_factory.mktemp("shared"))
    try:
        yield running
    finally:
        running.stop_all(graceful=False)


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``directory`` (a small disk to fill); skips unless root, as CI runs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def run_bench(name: str, args: list[str], out: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run ``mcpdb bench NAME ARGS --out OUT`` as a user would; returns the process and its results.json."""
    done = subprocess.run(
        [sys.executable, "-m", "mcpdb.cli", "bench", name, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads((out / "results.json").read_text())
