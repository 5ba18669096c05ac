"""A voter whose Raft port is taken stops with one line instead of running forever outside its cluster
(pysyncobj retries a failed bind for ever by default: the node served HTTP, never joined, never said why)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from mcpdb.ops.localcluster import ClusterLayout, LocalCluster

pytestmark = pytest.mark.integration


def test_a_voter_whose_raft_port_is_taken_exits_with_one_line(tmp_path: Path) -> None:
    layout = ClusterLayout.fresh(1)
    layout.extra_args = ["--no-inference"]
    spec = layout.nodes[0]
    assert spec.raft_addr is not None
    host, port = spec.raft_addr.rsplit(":", 1)
    cluster = LocalCluster(layout, tmp_path / "cluster")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        try:
            cluster.start(spec.node_id)
            exit_code = cluster.processes[spec.node_id].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the node kept running without its Raft port")
        finally:
            cluster.stop_all(graceful=False)
    output = (tmp_path / "cluster" / spec.node_id / "node.log").read_text()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert exit_code == 2, output
    assert errors == [
        f"error: cannot listen on the Raft address {spec.raft_addr} "
        "(the port is in use, or one this user may not bind) after 10 tries over 5 s"
    ], output
    assert "Traceback" not in output
