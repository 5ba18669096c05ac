"""Shared fixtures: real node processes on loopback with free ports.

Every cluster a test starts is killed at teardown, pass or fail, and each
node runs in its own process group, so nothing outlives the suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpdb.ops.localcluster import ClusterLayout, LocalCluster


def start_cluster(
    tmp_path: Path,
    size: int = 3,
    extra_args: list[str] | None = None,
    token: str | None = None,
    inference: bool = False,
    env: dict[str, str] | None = None,
) -> LocalCluster:
    """Store-only nodes unless ``inference``: loading a model per node is for the tests about it."""
    layout = ClusterLayout.fresh(size)
    layout.extra_args = (extra_args or []) + ([] if inference else ["--no-inference"])
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
