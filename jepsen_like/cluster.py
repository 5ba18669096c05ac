"""The cluster under test: real node processes, in namespaces when possible.

With namespaces, node i runs inside its own namespace at its own address,
with HTTP on :7700 and Raft on :7800 there. Those addresses are not loopback,
so (as any node insists) the cluster gets a bearer token and a Raft cluster
secret, generated per run. Without namespaces (not root), nodes run on
loopback and only the nemeses that need no network control are available.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from jepsen_like.netlab import NetLab, NetlabUnavailable, availability
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster, NodeSpec

HTTP_PORT = 7700
RAFT_PORT = 7800


@dataclass
class TestCluster:
    """A running cluster plus the network lab it lives in (None on loopback)."""

    cluster: LocalCluster
    lab: NetLab | None
    token: str

    @property
    def node_ids(self) -> list[str]:
        return [n.node_id for n in self.cluster.layout.nodes]

    def url(self, node_id: str) -> str:
        return self.cluster.spec(node_id).url

    def close(self) -> None:
        try:
            self.cluster.stop_all(graceful=False)
        finally:
            if self.lab is not None:
                self.lab.teardown()


def start(data_dir: Path, size: int, node_args: list[str], use_namespaces: bool = True) -> TestCluster:
    """Start ``size`` voters (in namespaces unless impossible or disabled) and wait for a leader."""
    token = secrets.token_urlsafe(16)
    lab: NetLab | None = None
    if use_namespaces and availability() is None:
        try:
            lab = NetLab(size)
            lab.setup()
        except (NetlabUnavailable, RuntimeError):
            if lab is not None:
                lab.teardown()
            raise
    if lab is not None:
        layout = ClusterLayout(
            [NodeSpec(h.name, f"{h.address}:{HTTP_PORT}", f"{h.address}:{RAFT_PORT}") for h in lab.hosts]
        )
        env = {"MCPDB_CLUSTER_SECRET": secrets.token_urlsafe(24)}
        wrap = lab.exec_prefix
        cluster = LocalCluster(
            layout, data_dir, env=env, token=token, wrap_command=lambda node_id, argv: wrap(node_id) + argv
        )
    else:
        layout = ClusterLayout.fresh(size)
        cluster = LocalCluster(layout, data_dir, token=token)
    layout.extra_args = node_args
    running = TestCluster(cluster, lab, token)
    try:
        cluster.start_all()
        cluster.wait_ready(timeout=60)
    except BaseException:
        running.close()
        raise
    return running
