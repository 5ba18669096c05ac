"""Cluster traffic is sealed by the cluster secret: a node without it (or with another one) cannot
join, read the log or vote, and raw bytes on a Raft port change nothing."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from mcpdb.client import Client
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster, NodeSpec, free_port
from tests.conftest import start_cluster

pytestmark = pytest.mark.integration

SECRET = {"MCPDB_CLUSTER_SECRET": "the-real-cluster-secret"}


def _intruders(cluster: LocalCluster, data_dir: Path) -> LocalCluster:
    """A voter with no secret, a voter with a wrong one, and a replica with a wrong one, each
    pointed at the real voters (only the intruders are started)."""
    specs = [
        NodeSpec(f"x{i}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", voter=voter)
        for i, voter in enumerate((True, True, False))
    ]
    specs[1].args = specs[2].args = []
    layout = ClusterLayout([*cluster.layout.nodes, *specs], ["--no-inference"])
    return LocalCluster(layout, data_dir)


def _wait_for_campaigns(intruders: LocalCluster, past: int, timeout: float) -> list[int]:
    """The intruder voters' terms once one of them reached ``past`` (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = [intruders.node_status(node_id) for node_id in ("x0", "x1")]
        terms = [status["term"] if status else 0 for status in statuses]
        if max(terms) >= past or time.monotonic() > deadline:
            return terms
        time.sleep(0.2)


def test_a_node_without_the_secret_cannot_join_read_or_vote(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "real", env=SECRET)
    intruders = _intruders(cluster, tmp_path / "intruders")
    try:
        with Client(cluster.urls()) as client:
            for i in range(20):
                client.put("secret", f"k{i}", {"kind": "memory", "facts": ["classified"]})
        before = {n.node_id: cluster.node_status(n.node_id) for n in cluster.layout.nodes}
        intruders.env = {}  # x0: no secret at all
        intruders.start("x0")
        intruders.env = {"MCPDB_CLUSTER_SECRET": "a-guessed-secret"}  # x1 (voter) and x2 (replica): wrong one
        intruders.start("x1")
        intruders.start("x2")
        for raft_addr in [n.raft_addr for n in cluster.layout.nodes]:  # raw bytes at every Raft port
            host, port = raft_addr.split(":")
            with socket.create_connection((host, int(port)), timeout=2) as raw:
                raw.sendall(b'\x00\x00\x00\x10{"type":"vote"}' * 50)
        # Intruder voters time out, campaign with ever higher terms and send RequestVote to every
        # real voter; the replica asks for the log. Wait until one has campaigned well past the
        # cluster's term (a few election timeouts; on a loaded machine the intruders start slowly).
        term_before = max(status["term"] for status in before.values())
        intruder_terms = _wait_for_campaigns(intruders, past=term_before + 3, timeout=40)
        # Had one of their vote requests been read, the real nodes would have followed its term.
        # (One election of their own, e.g. a heartbeat late on a loaded machine, is allowed.)
        assert max(intruder_terms) >= term_before + 3, intruder_terms

        after = {n.node_id: cluster.node_status(n.node_id) for n in cluster.layout.nodes}
        real_addresses = {n.raft_addr for n in cluster.layout.nodes}
        assert max(status["term"] for status in after.values()) <= term_before + 1, (before, after)
        assert cluster.leader() in {n.node_id for n in cluster.layout.nodes}
        for node_id, status in after.items():  # nobody replicates to an intruder
            assert set(status["match_index"]) <= real_addresses, (node_id, status["match_index"])
        members = httpx.get(cluster.urls()[0] + "/v1/cluster").json()["raft_members"]
        assert sorted(members) == sorted(n.raft_addr for n in cluster.layout.nodes)
        for node_id in ("x0", "x1", "x2"):
            status = intruders.node_status(node_id)
            assert status is not None, f"{node_id} is not serving"
            assert status["leader"] is None and status["store"]["contexts"] == 0, (node_id, status)
            refused = httpx.get(intruders.spec(node_id).url + "/v1/namespaces/secret/contexts/k1")
            assert refused.status_code == 503  # no leader: it cannot confirm, let alone serve, a read
        with Client(cluster.urls()) as client:  # and the real cluster carries on
            assert client.put("secret", "after", {"kind": "memory", "facts": ["ok"]})["version"] > 0
    finally:
        intruders.stop_all(graceful=False)
        cluster.stop_all(graceful=False)
