"""One harness run: cluster up, clients and nemeses for a while, heal, final reads, check, report.

Clients are threads in this process, each a Jepsen "process" with its own
HTTP connection to one node (rotating over nodes), with a token scoped to the
workloads' namespaces (so each request's token check, and a read served at its
read index, are under test too). The run records every
operation in a history, heals every fault, waits for the cluster to recover,
then reads every key from every node once that node has applied everything
the leader committed: each acknowledged write must be there, on every node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from jepsen_like import cluster as cluster_module
from jepsen_like.background_load import BackgroundLoad
from jepsen_like.checkers import chat, linearizability, list_append
from jepsen_like.history import Recorder
from jepsen_like.nemesis import Schedule, resolve
from jepsen_like.netlab import availability
from jepsen_like.workloads import WORKLOADS, ListAppendWorkload, Outcome, RegisterWorkload, namespace_of
from mcpdb.client import Client

CLIENT_TIMEOUT_S = 3.0
NODE_REQUEST_TIMEOUT_S = 2.0
CHECK_BUDGET_S = 60.0
SAMPLE_PERIOD_S = 2.0  # how often the nodes' counters are read during the run


@dataclass
class RunConfig:
    nemeses: list[str]
    workloads: list[str]
    time_s: float = 60.0
    concurrency: int = 10
    nodes: int = 3
    out: Path = Path("jepsen-runs")
    unsafe_stale_reads: bool = False
    fault_s: float = 5.0
    heal_s: float = 5.0
    combined: bool = False
    seed: int = 0
    use_namespaces: bool = True
    preload: int = 0  # 1 KiB memory contexts loaded before the clients start (a store of that size under faults)
    compact: bool = False  # force a snapshot on every node in every fault window
    background_load: bool = False  # batches into a namespace of their own throughout (BackgroundLoad)


@dataclass
class RunResult:
    config: RunConfig
    recorder: Recorder
    windows: list[Any]
    checks: dict[str, Any]
    final_reads: dict[str, dict[str, Any]]
    namespaces: bool
    started_at: float
    summary: dict[str, Any] = field(default_factory=dict)
    preloaded: dict[str, Any] = field(default_factory=dict)
    background_batches: int = 0  # acknowledged
    reads_served_ahead: int = 0  # reads of one namespace the nodes answered before applying their read index

    @property
    def valid(self) -> bool:
        return all(check.get("valid") is True for check in self.checks.values())


def run(config: RunConfig, on_progress: Callable[[float, int], None] | None = None) -> RunResult:
    """Run the harness once; ``on_progress(elapsed_s, ops)`` is called about every 0.5 s."""
    unknown = [w for w in config.workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    have_network = config.use_namespaces and availability() is None
    nemeses = resolve(config.nemeses, have_network)
    config.out.mkdir(parents=True, exist_ok=True)
    chatting = "chat" in config.workloads
    node_args = ["--request-timeout", str(NODE_REQUEST_TIMEOUT_S)]
    # Only the chat workload needs a model on every node; loading one costs seconds and memory.
    node_args += ["--n-ctx", "2048"] if chatting else ["--no-inference"]
    if config.unsafe_stale_reads:
        node_args.append("--unsafe-stale-reads")
    test = cluster_module.start(config.out / "data", config.nodes, node_args, use_namespaces=have_network)
    try:
        if chatting:
            test.cluster.wait_models(timeout=180)
        preloaded = _preload(test, config.preload) if config.preload else {}
        workloads = [WORKLOADS[name]() for name in config.workloads]
        token = _client_token(test, workloads)
    except BaseException:
        test.close()
        raise
    started = time.monotonic()
    clock = lambda: time.monotonic() - started  # noqa: E731 - the run's clock, shared by all parts
    recorder = Recorder(clock)
    schedule = Schedule(nemeses, config.fault_s, config.heal_s, config.combined, config.seed, config.compact)
    stop = threading.Event()
    urls = [test.url(node) for node in test.node_ids]
    background = BackgroundLoad(urls, test.token, CLIENT_TIMEOUT_S) if config.background_load else None
    try:
        threads = [threading.Thread(target=schedule.run, args=(test, clock, stop), daemon=True)]
        processes = _ProcessIds(config.concurrency)
        for worker in range(config.concurrency):
            threads.append(
                threading.Thread(
                    target=_client_loop,
                    args=(
                        worker,
                        test,
                        token,
                        workloads[worker % len(workloads)],
                        recorder,
                        clock,
                        stop,
                        processes,
                        random.Random(config.seed * 1000 + worker),
                    ),
                    daemon=True,
                )
            )
        for thread in threads:
            thread.start()
        served_ahead = _ServedAhead(test)
        with background if background is not None else contextlib.nullcontext():
            while clock() < config.time_s:
                time.sleep(0.5)
                if on_progress is not None:
                    on_progress(clock(), len(recorder.ops))
                served_ahead.sample_every(SAMPLE_PERIOD_S)
        stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S + 30)
        schedule.heal_everything(test)
        test.cluster.wait_ready(timeout=60)
        final_reads = _final_reads(test, workloads)
        served_ahead.sample_every(0)
    finally:
        stop.set()
        test.close()
    checks = _check(recorder, workloads, final_reads)
    namespaces = test.lab is not None
    return RunResult(
        config,
        recorder,
        schedule.windows,
        checks,
        final_reads,
        namespaces,
        started,
        preloaded=preloaded,
        background_batches=background.acknowledged if background is not None else 0,
        reads_served_ahead=served_ahead.total,
    )


def _client_token(test: cluster_module.TestCluster, workloads: list[Any]) -> str:
    """A token with write scope in each namespace the workloads use, minted with the bootstrap token
    (``Client`` tries the next node, and retries a refusal that certainly applied nothing)."""
    scopes = {namespace_of(key): "write" for workload in workloads for key in workload.keys}
    with Client([test.url(node) for node in test.node_ids], token=test.token) as root:
        return str(root.create_token(scopes)["token"])


def _preload(test: cluster_module.TestCluster, contexts: int) -> dict[str, Any]:
    """``contexts`` 1 KiB memory contexts in a namespace of their own (``mcpdb bench scale``'s, from its
    three loader processes): the faults then meet a store of that size, its snapshots, catch-ups and
    restarts. Returns the loader's account (acknowledged, per second, failed batch attempts)."""
    from benchmarks.scale import load_records

    urls = [test.url(node) for node in test.node_ids]
    headers = {"Authorization": f"Bearer {test.token}"}
    loaded = load_records("mcpdb", urls, contexts, 3, 500, max(1, contexts // 10), headers)
    if loaded["lost"]:
        raise RuntimeError(f"preload: {loaded['lost']} of {contexts} contexts were not acknowledged")
    return loaded


class _ServedAhead:
    """The reads of one namespace the nodes answered before applying their read index, over the whole
    run. A node's counter starts with its process, and the nemeses restart nodes (a run ending with a
    crash of every node read 0 at the end), so each is sampled and a drop is taken for a restart."""

    def __init__(self, test: cluster_module.TestCluster) -> None:
        self._test = test
        self._last: dict[str, int] = {}
        self._sampled = 0.0
        self.total = 0

    def sample_every(self, period_s: float) -> None:
        if time.monotonic() - self._sampled < period_s:
            return
        self._sampled = time.monotonic()
        for node in self._test.node_ids:
            status = self._test.cluster.node_status(node)
            if status is None:  # down, paused or cut off: read at the next sample
                continue
            now, before = status.get("reads_served_ahead", 0), self._last.get(node, 0)
            self.total += now - before if now >= before else now
            self._last[node] = now


class _ProcessIds:
    """Hands out Jepsen process ids: a worker whose operation went indeterminate gets a new one."""

    def __init__(self, first: int) -> None:
        self._next = first
        self._lock = threading.Lock()

    def fresh(self) -> int:
        with self._lock:
            self._next += 1
            return self._next


def _client_loop(
    worker: int,
    test: cluster_module.TestCluster,
    token: str,
    workload: Any,
    recorder: Recorder,
    clock: Callable[[], float],
    stop: threading.Event,
    processes: _ProcessIds,
    rng: random.Random,
) -> None:
    process = worker
    nodes = test.node_ids
    headers = {"Authorization": f"Bearer {token}"}
    clients = {node: httpx.Client(base_url=test.url(node), headers=headers, timeout=CLIENT_TIMEOUT_S) for node in nodes}
    try:
        while not stop.is_set():
            node = nodes[(worker + rng.randrange(len(nodes))) % len(nodes)]
            op = workload.next_op(rng)
            handle = recorder.invoke(process, op.f, op.key, op.value, node)
            try:
                value = workload.execute(clients[node], op)
            except Outcome as outcome:
                recorder.complete(handle, outcome.kind, error=outcome.error)
                if outcome.kind == "info":
                    process = processes.fresh()
                    clients[node].close()
                    clients[node] = httpx.Client(base_url=test.url(node), headers=headers, timeout=CLIENT_TIMEOUT_S)
                else:
                    time.sleep(0.05)  # back off a little while the cluster is unavailable
                continue
            recorder.complete(handle, "ok", value=value)
    finally:
        for client in clients.values():
            client.close()


def _final_reads(test: cluster_module.TestCluster, workloads: list[Any]) -> dict[str, dict[str, Any]]:
    """Every key read from every node (stale read, after the node applied the leader's commit index)."""
    headers = {"Authorization": f"Bearer {test.token}"}
    leader = test.cluster.leader()
    target = test.cluster.node_status(leader)["commit_index"] if leader else 0
    reads: dict[str, dict[str, Any]] = {}
    for node in test.node_ids:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = test.cluster.node_status(node)
            if status and status["applied_index"] >= target:
                break
            time.sleep(0.1)
        with httpx.Client(base_url=test.url(node), headers=headers, timeout=10) as http:
            reads[node] = {key: workload.final_read(http, key) for workload in workloads for key in workload.keys}
    return reads


def _check(recorder: Recorder, workloads: list[Any], final_reads: dict[str, dict[str, Any]]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    for workload in workloads:
        keys = set(workload.keys)
        ops = [op for op in recorder.ops if op.key in keys]
        finals = {node: {k: v for k, v in reads.items() if k in keys} for node, reads in final_reads.items()}
        if isinstance(workload, RegisterWorkload):
            checks["register"] = linearizability.check(ops, time_budget=CHECK_BUDGET_S)
            anomalies = linearizability.check_final(ops, finals)
            checks["register-final"] = {"valid": not anomalies, "anomalies": anomalies}
        elif isinstance(workload, ListAppendWorkload):
            checks.update(_check_lists("list-append", ops, finals))
        else:
            messages = {
                node: {key: workload.messages(turns) for key, turns in sessions.items()}
                for node, sessions in finals.items()
            }
            # A chat appends its message like a list-append appends its value.
            as_appends = [dataclasses.replace(op, f="append") if op.f == "chat" else op for op in ops]
            checks.update(_check_lists("chat-messages", as_appends, messages))
            any_node = next(iter(finals.values()), {})
            checks["chat"] = chat.check(ops, any_node)
    return checks


def _check_lists(name: str, ops: list[Any], finals: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """The history's reads and appends, then every node's final lists against the acknowledged appends."""
    anomalies = list_append.check_final(ops, finals)
    return {name: list_append.check(ops), f"{name}-final": {"valid": not anomalies, "anomalies": anomalies}}
