"""Prometheus metrics of one node, served at ``/metrics`` (prometheus-client's text format).

Almost everything is read at scrape time from the state the node already
keeps (Raft status, store counters, barrier counters, worker load, the
leader's scheduling decisions), so scraping costs the request path nothing.
Only what happens per request and is not kept elsewhere is observed as it
happens: time to first token, once per generated reply, and each HTTP
request's route, status and latency (plain counters, see request_stats).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mcpdb.node.http.request_stats import RequestStats

if TYPE_CHECKING:
    from mcpdb.inference.llama_worker import Worker
    from mcpdb.node.autoscaling import AutoscaleDuty

ROLES = ("leader", "follower", "candidate", "replica", "starting")
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RaftGauges(Protocol):
    """What metrics read of replication."""

    def status(self) -> dict[str, Any]: ...

    def is_leader(self) -> bool: ...

    def leader_changes(self) -> int: ...


class StoreGauges(Protocol):
    """What metrics read of the store."""

    @property
    def snapshots_installed(self) -> int: ...

    def stats(self) -> dict[str, int]: ...

    def count_by_kind(self) -> dict[str, int]: ...


class BarrierCounters(Protocol):
    @property
    def batches(self) -> int: ...

    @property
    def reads(self) -> int: ...


class SchedulerCounters(Protocol):
    @property
    def decisions(self) -> Mapping[str, int]: ...

    @property
    def reasons(self) -> Mapping[str, int]: ...


class MetricsSource(Protocol):
    """The parts of a node its metrics read at scrape time (NodeRuntime is one)."""

    @property
    def replication(self) -> RaftGauges: ...

    @property
    def store(self) -> StoreGauges: ...

    @property
    def barrier(self) -> BarrierCounters: ...

    @property
    def worker(self) -> Worker | None: ...

    @property
    def scheduler(self) -> SchedulerCounters: ...

    @property
    def autoscale(self) -> AutoscaleDuty: ...


def gauge(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


class NodeMetrics:
    """The node's registry: a scrape-time collector over the runtime, plus the TTFT histogram."""

    def __init__(self, runtime: MetricsSource) -> None:
        self.registry = CollectorRegistry()
        self.ttft = Histogram(
            "mcpdb_inference_ttft_seconds",
            "Time from a request reaching its worker to its first generated token.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.requests = RequestStats()
        self._runtime = runtime
        self._sources: list[Callable[[], Iterator[Metric]]] = []
        self.registry.register(self)

    def add_source(self, source: Callable[[], Iterator[Metric]]) -> None:
        """Gauges of a part the runtime does not hold (the MCP endpoint), read at scrape time too."""
        self._sources.append(source)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtime
        raft = runtime.replication.status()
        yield gauge("mcpdb_raft_term", "Current Raft term.", raft["term"])
        roles = GaugeMetricFamily("mcpdb_raft_role", "1 for this node's current Raft role.", labels=["role"])
        for role in ROLES:
            roles.add_metric([role], 1.0 if raft["role"] == role else 0.0)
        yield roles
        yield gauge("mcpdb_raft_commit_index", "Highest log index known committed.", raft["commit_index"])
        yield gauge("mcpdb_raft_applied_index", "Highest log index applied to the store.", raft["applied_index"])
        yield gauge(
            "mcpdb_raft_apply_lag",
            "Committed entries not yet applied here.",
            max(0, raft["commit_index"] - raft["applied_index"]),
        )
        yield CounterMetricFamily(
            "mcpdb_reads_served_ahead",
            "Linearizable reads of one namespace answered before this node applied their read index (what was "
            "left were other namespaces' entries).",
            value=raft["reads_served_ahead"],
        )
        yield gauge(
            "mcpdb_raft_log_entries",
            "Entries in the in-memory Raft log (since the last snapshot).",
            raft["log_entries"],
        )
        yield gauge(
            "mcpdb_raft_has_quorum",
            "1 if this node, as leader, hears from a majority.",
            1.0 if raft["has_quorum"] else 0.0,
        )
        yield CounterMetricFamily(
            "mcpdb_raft_leader_changes",
            "Times the leader this node knows changed (sampled every 0.1 s).",
            value=runtime.replication.leader_changes(),
        )
        store = runtime.store
        yield CounterMetricFamily(
            "mcpdb_raft_snapshots_written",
            "Snapshots (log compactions) this node wrote.",
            value=raft.get("snapshots_written", 0),
        )
        yield gauge(
            "mcpdb_disk_alarm",
            "1 while this node cannot reserve disk space and refuses writes (507).",
            1.0 if raft.get("disk_alarm") else 0.0,
        )
        yield gauge(
            "mcpdb_disk_free_bytes", "Free space on the data directory's file system.", raft.get("disk_free_bytes", 0)
        )
        yield gauge("mcpdb_raft_journal_bytes", "Bytes of entries in the Raft journal.", raft.get("journal_bytes", 0))
        yield CounterMetricFamily(
            "mcpdb_raft_snapshot_failures",
            "Snapshots this node failed to write (it keeps its journal and retries).",
            value=raft.get("snapshot_failures", 0),
        )
        yield CounterMetricFamily(
            "mcpdb_raft_snapshots_installed",
            "Snapshots this node installed from the leader (it was too far behind for the log).",
            value=store.snapshots_installed,
        )
        yield from self.requests.families()
        yield from self._store(runtime)
        barrier = runtime.barrier
        yield CounterMetricFamily(
            "mcpdb_read_barrier_batches",
            "Batches of reads (one event-loop turn's), each one read-index request per namespace read.",
            value=barrier.batches,
        )
        yield CounterMetricFamily(
            "mcpdb_read_barrier_reads",
            "Linearizable reads served through a barrier (reads / batches = mean batch size).",
            value=barrier.reads,
        )
        yield from self._inference(runtime)
        for source in self._sources:
            yield from source()

    @staticmethod
    def _store(runtime: MetricsSource) -> Iterator[Metric]:
        stats = runtime.store.stats()
        yield gauge("mcpdb_store_size_bytes", "Bytes used by the LMDB environment.", stats["size_bytes"])
        yield gauge("mcpdb_store_turns", "Session turns stored.", stats["turns"])
        per_kind = GaugeMetricFamily("mcpdb_store_contexts", "Contexts stored, by kind.", labels=["kind"])
        for kind, count in sorted(runtime.store.count_by_kind().items()):
            per_kind.add_metric([kind], count)
        yield per_kind

    @staticmethod
    def _inference(runtime: MetricsSource) -> Iterator[Metric]:
        worker = runtime.worker
        if worker is not None and worker.ready:
            load = worker.load_report()
            for key, help_text in (
                ("in_flight", "Generations running."),
                ("queued", "Requests waiting for a slot."),
                ("slots", "KV slots (concurrent generations)."),
                ("tokens_per_s", "Tokens generated per second, last 10 s."),
                ("sessions_recent", "Distinct sessions served, last 10 s."),
            ):
                yield gauge(f"mcpdb_inference_{key}", help_text, load[key])
            yield gauge("mcpdb_inference_weight", "Scheduling weight this node registered.", worker.weight)
        scheduler = runtime.scheduler
        assigned = CounterMetricFamily(
            "mcpdb_scheduler_assignments", "Requests this node assigned as leader, by worker.", labels=["node"]
        )
        for node, count in sorted(scheduler.decisions.items()):
            assigned.add_metric([node], count)
        yield assigned
        total = sum(scheduler.reasons.values())
        yield gauge(
            "mcpdb_scheduler_affinity_hit_ratio",
            "Share of assignments sent to the worker already holding the session (reason=affinity).",
            scheduler.reasons["affinity"] / total if total else 0.0,
        )
        reasons = CounterMetricFamily(
            "mcpdb_scheduler_decisions", "Assignments by reason (affinity hits are reason=affinity).", labels=["reason"]
        )
        for reason, count in sorted(scheduler.reasons.items()):
            reasons.add_metric([reason], count)
        yield reasons
        yield from NodeMetrics._autoscale(runtime)

    @staticmethod
    def _autoscale(runtime: MetricsSource) -> Iterator[Metric]:
        """The leader's last decision (the duty records its observation and decision together)."""
        autoscale = runtime.autoscale
        if autoscale.decision is None or autoscale.observation is None or not runtime.replication.is_leader():
            return
        yield gauge("mcpdb_autoscale_desired_workers", "Workers the autoscaler wants.", autoscale.decision.desired)
        yield gauge(
            "mcpdb_autoscale_utilisation",
            "Requests in flight or queued per slot, averaged over the policy's window.",
            min(autoscale.decision.utilisation, 1e9),
        )
        yield gauge("mcpdb_autoscale_live_workers", "Workers alive and not draining.", autoscale.observation.workers)
