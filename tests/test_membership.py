"""Membership on a real cluster: add and remove a voter, a non-voting replica, leadership transfer."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from mcpdb.ops.localcluster import NodeSpec, free_port
from tests.conftest import start_cluster

pytestmark = pytest.mark.integration

MEMORY = {"kind": "memory", "facts": ["likes tea"]}


def _wait(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


def _add_node(cluster, node_id: str, voter: bool) -> NodeSpec:
    spec = NodeSpec(node_id, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}" if voter else None, voter)
    cluster.layout.nodes.append(spec)
    cluster.start(node_id)
    return spec


def test_add_use_and_remove_a_voter(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    try:
        first = cluster.urls()[0]
        httpx.put(f"{first}/v1/namespaces/m/contexts/before", json=MEMORY).raise_for_status()
        new = _add_node(cluster, "n4", voter=True)
        added = httpx.post(f"{first}/v1/cluster/members", json={"raft_addr": new.raft_addr}, timeout=10)
        assert added.status_code == 201, added.text
        assert new.raft_addr in added.json()["voters"]
        cluster.wait_ready(timeout=30)
        # The new voter holds what was written before it joined and serves linearizable reads.
        assert httpx.get(f"{new.url}/v1/namespaces/m/contexts/before").status_code == 200
        httpx.put(f"{new.url}/v1/namespaces/m/contexts/after", json=MEMORY).raise_for_status()
        assert httpx.get(f"{first}/v1/namespaces/m/contexts/after").status_code == 200
        assert len(httpx.get(f"{first}/v1/cluster").json()["raft_members"]) == 4

        removed = httpx.delete(f"{first}/v1/cluster/members/{new.raft_addr}", timeout=10)
        assert removed.status_code == 200, removed.text
        _wait(lambda: new.raft_addr not in httpx.get(f"{first}/v1/cluster").json()["raft_members"])
        cluster.stop("n4")
        # Three voters remain and keep committing.
        httpx.put(f"{first}/v1/namespaces/m/contexts/later", json=MEMORY).raise_for_status()
        assert httpx.delete(f"{first}/v1/cluster/members/127.0.0.1:1", timeout=10).status_code == 404
    finally:
        cluster.stop_all(graceful=False)


def test_non_voting_replica_serves_linearizable_reads(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    try:
        replica = _add_node(cluster, "r1", voter=False)
        _wait(lambda: httpx.get(f"{replica.url}/readyz").status_code == 200 if _up(replica.url) else False)
        status = httpx.get(f"{replica.url}/v1/node").json()
        assert status["role"] == "replica" and status["voter"] is False
        # A write through the replica goes through the leader; a read on it sees it at once.
        httpx.put(f"{replica.url}/v1/namespaces/m/contexts/via-replica", json=MEMORY).raise_for_status()
        httpx.put(f"{cluster.urls()[0]}/v1/namespaces/m/contexts/via-voter", json=MEMORY).raise_for_status()
        assert httpx.get(f"{replica.url}/v1/namespaces/m/contexts/via-voter").status_code == 200
        # It does not count towards the quorum: 3 voters are still the membership.
        assert len(httpx.get(f"{replica.url}/v1/cluster").json()["raft_members"]) == 3
    finally:
        cluster.stop_all(graceful=False)


def test_graceful_stop_of_the_leader_hands_leadership_over(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    try:
        leader = cluster.leader()
        assert leader is not None
        survivors = [n.node_id for n in cluster.layout.nodes if n.node_id != leader]
        began = time.monotonic()
        cluster.stop(leader)
        new_leader = cluster.wait_ready(timeout=10, nodes=survivors)
        assert new_leader in survivors
        assert time.monotonic() - began < 2.0
    finally:
        cluster.stop_all(graceful=False)


def _up(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=0.5)
        return True
    except httpx.HTTPError:
        return False
