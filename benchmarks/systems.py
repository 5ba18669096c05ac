"""The two clusters the KV benchmark compares, behind one small interface.

The benchmark loop (``kv.py``) and the failover trials (``failover.py``)
only need a cluster's client URLs, its wrk scenarios, its leader, a way to
kill and restart a member, and one acknowledged write; each adapter answers
those for its system so the measuring code is written once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Self

import httpx

from benchmarks.etcd_cluster import EtcdCluster, b64
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster

HOT_VALUE = "x" * 1024  # the one record the read scenarios read, same size as the writes


class System(Protocol):
    name: str
    write_scenario: str  # lua/<name>.lua files
    read_scenario: str

    def urls(self) -> list[str]: ...
    def url(self, member: str) -> str: ...
    def leader(self) -> str: ...
    def kill(self, member: str) -> None: ...
    def restart(self, member: str) -> None: ...
    async def write(self, http: httpx.AsyncClient, url: str, key: str) -> bool: ...
    def findings(self) -> dict[str, Any]: ...
    def pids(self) -> list[int]: ...


class _Adapter:
    """What both adapters do the same way; ``cluster`` is a LocalCluster or an EtcdCluster."""

    cluster: Any

    def _start(self) -> None:
        """Start the cluster and write the hot record."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.cluster.__exit__(None, None, None)  # kill whatever did start
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.__exit__(*exc)

    def urls(self) -> list[str]:
        return list(self.cluster.urls())

    def kill(self, member: str) -> None:
        self.cluster.kill(member)

    def restart(self, member: str) -> None:
        self.cluster.start(member)
        self.cluster.wait_ready()

    def findings(self) -> dict[str, Any]:
        return {}

    def pids(self) -> list[int]:
        """The running members' process ids (each member is one process, its group's leader)."""
        return [process.pid for process in self.cluster.processes.values() if process.poll() is None]


class Mcpdb(_Adapter):
    """A fresh 3-node mcpdb cluster (``LocalCluster``) holding the hot context."""

    name, write_scenario, read_scenario = "mcpdb", "mcpdb_put", "mcpdb_get"

    def __init__(self, data_dir: Path, durability: str, extra_args: list[str] | None = None) -> None:
        """``extra_args``: more flags for every node."""
        layout = ClusterLayout.fresh(3)
        layout.extra_args = ["--durability", durability, "--no-inference", *(extra_args or [])]
        self.cluster = LocalCluster(layout, data_dir)

    def _start(self) -> None:
        self.cluster.start_all()
        self.cluster.wait_ready()
        httpx.put(
            self.urls()[0] + "/v1/namespaces/bench/contexts/hot",
            json={"kind": "memory", "facts": [HOT_VALUE]},
            timeout=5,
        ).raise_for_status()

    def url(self, member: str) -> str:
        return self.cluster.spec(member).url

    def leader(self) -> str:
        return self.cluster.wait_ready()

    async def write(self, http: httpx.AsyncClient, url: str, key: str) -> bool:
        response = await http.put(f"{url}/v1/namespaces/bench/contexts/{key}", json={"kind": "memory", "facts": [key]})
        return response.status_code in (200, 201)

    def findings(self) -> dict[str, Any]:
        """pysyncobj's CRITICAL "truncating already-applied" records in the node logs (must stay 0)."""
        logs = (self.cluster.log_path(spec.node_id) for spec in self.cluster.layout.nodes)
        return {
            "critical_truncations": sum(
                log.read_text(errors="replace").count("truncating already-applied") for log in logs if log.exists()
            )
        }


class Etcd(_Adapter):
    """A fresh 3-member etcd cluster, spoken to through its JSON gateway (``/v3/kv/*``)."""

    name, write_scenario, read_scenario = "etcd", "etcd_put", "etcd_get"

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        """``extra_args``: more flags for every member."""
        self.cluster = EtcdCluster(data_dir, extra_args=extra_args)

    def _start(self) -> None:
        self.cluster.start_all()
        httpx.post(
            self.urls()[0] + "/v3/kv/put", json={"key": b64("hot"), "value": b64(HOT_VALUE)}, timeout=5
        ).raise_for_status()

    def url(self, member: str) -> str:
        return self.cluster.url(member)

    def leader(self) -> str:
        return self.cluster.leader()

    async def write(self, http: httpx.AsyncClient, url: str, key: str) -> bool:
        response = await http.post(f"{url}/v3/kv/put", json={"key": b64(key), "value": b64(key)})
        return response.status_code == 200
