"""How long until a write is vector-searchable, on a real cluster under write load (``mcpdb bench retrieval``).

A write commits without its vector; the leader's embedding duty adds it through the log (``SetVectors``)
a batch at a time, the namespaces taking turns. What a user sees is the delay between a write's
acknowledgement and the first vector search that finds it. Measured on three real node processes
(each with the bundled chat model and the default embedding model, as ``mcpdb up`` runs them), in
phases of increasing background load: a loader process writes memories to one namespace (``bulk``) at
a fixed rate through the batch API, while a probe writes one memory a second to that namespace and one
to another (``quiet``, another tenant's), and asks a vector search for each (its own text, among its
own user's memories, so the search itself costs the same in every phase) until it is found, or
until twice the phase's length has passed after it.

Reported per phase: the delay's p50/p99/max in each namespace, the probes never found within the wait,
and the vectors the leader embedded per second (the duty's capacity: a load above it grows a backlog
in the loaded namespace, which its own later writes wait behind; the other tenant's should not).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.stats import percentile

NAMESPACES = ("bulk", "quiet")
PROBE_EVERY_S = 1.0
POLL_S = 0.05
SETTLE_PHASES = 2.0  # after a phase, its last probes may take this many phases' time to be found
BATCH = 50  # the loader's memories per batch request


def _load(urls: list[str], rate: int, seconds: float, stop: Any) -> None:
    """Write ``rate`` memories a second to ``bulk`` for ``seconds`` (a child process: the load's own
    client must not share the probe's interpreter)."""
    began = time.monotonic()
    sent = 0
    with httpx.Client(timeout=30) as http:
        while not stop.is_set() and time.monotonic() - began < seconds:
            ops = [
                {
                    "op": "put",
                    "id": f"load-{uuid.uuid4().hex[:16]}",
                    "context": {
                        "kind": "memory",
                        "user_id": "loader",
                        "facts": [f"Load note {sent + i} about {i % 7}"],
                    },
                }
                for i in range(BATCH)
            ]
            try:
                http.post(f"{urls[sent // BATCH % len(urls)]}/v1/namespaces/bulk/batch", json={"ops": ops})
            except httpx.HTTPError:
                pass  # a slow answer is the load's problem, not the measurement's
            sent += BATCH
            pause = began + sent / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)


@dataclass
class _Probe:
    namespace: str
    text: str
    acked: float
    found: float | None = None


def _probe(urls: list[str], seconds: float) -> list[_Probe]:
    """Write a probe memory to each namespace every ``PROBE_EVERY_S`` for ``seconds`` and poll a vector
    search for each until found (or ``SETTLE_PHASES`` phases' time after the phase, at least 5 s)."""
    probes: list[_Probe] = []
    began = time.monotonic()
    with httpx.Client(timeout=30) as http:
        next_write = began
        while True:
            now = time.monotonic()
            if now - began < seconds and now >= next_write:
                for namespace in NAMESPACES:
                    text = f"Probe fact {uuid.uuid4().hex[:10]} kept in {namespace}"
                    body = {"kind": "memory", "user_id": "probe", "facts": [text]}
                    url = f"{urls[0]}/v1/namespaces/{namespace}/contexts/p-{uuid.uuid4().hex[:12]}"
                    http.put(url, json=body).raise_for_status()  # a probe not written is no measurement
                    probes.append(_Probe(namespace, text, time.monotonic()))
                next_write += PROBE_EVERY_S
            waiting = [p for p in probes if p.found is None]
            if now - began >= seconds and (not waiting or now - began > seconds + max(5.0, SETTLE_PHASES * seconds)):
                return probes
            for namespace in NAMESPACES:
                # A namespace's queue is embedded in order: once one probe is not found yet, the later
                # ones are not either, and asking for them would only slow the loop (and the timing).
                for probe in (p for p in waiting if p.namespace == namespace):
                    if not _found(http, urls[0], probe):
                        break
                    probe.found = time.monotonic()
            time.sleep(POLL_S)


def _found(http: httpx.Client, url: str, probe: _Probe) -> bool:
    """Whether a vector search of the probe's own words, among the probe user's memories, ranks it first."""
    params = {"q": probe.text, "mode": "vector", "user_id": "probe", "k": 1}
    answer = http.get(f"{url}/v1/namespaces/{probe.namespace}/search", params=params)
    answer.raise_for_status()
    hits = answer.json()["results"]
    return bool(hits) and hits[0]["context"]["facts"] == [probe.text]


def _embedded(http: httpx.Client, urls: list[str]) -> int:
    return sum(http.get(url + "/v1/node").json()["inference"]["embedded"] for url in urls)


def measure(cluster: Any, rates: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """Each phase's delays from acknowledgement to vector-searchable, by namespace, and the embedding rate."""
    urls = cluster.urls()
    phases: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")
    with httpx.Client(timeout=10) as http:
        for rate in rates:
            stop = context.Event()
            loader = context.Process(target=_load, args=(urls, rate, seconds, stop)) if rate else None
            embedded_before, began = _embedded(http, urls), time.monotonic()
            if loader is not None:
                loader.start()
            probes = _probe(urls, seconds)
            stop.set()
            if loader is not None:
                loader.join(timeout=30)
            spent = time.monotonic() - began
            phase: dict[str, Any] = {
                "load_per_s": rate,
                "embedded_per_s": (_embedded(http, urls) - embedded_before) / spent,
            }
            for namespace in NAMESPACES:
                delays = [p.found - p.acked for p in probes if p.namespace == namespace and p.found is not None]
                phase[namespace] = {
                    "probes": sum(1 for p in probes if p.namespace == namespace),
                    "not_found": sum(1 for p in probes if p.namespace == namespace and p.found is None),
                    "p50_s": percentile(delays, 0.5),
                    "p99_s": percentile(delays, 0.99),
                    "max_s": max(delays, default=None),
                }
            phases[str(rate)] = phase
    return phases


def start_cluster(folder: Path, extra_args: list[str]) -> Any:
    """Three nodes with the bundled chat model and the default embedding model (or ``extra_args``'
    ``--embedding-model``), as ``mcpdb up`` runs them."""
    return start_model_cluster(folder, 3, ["--slots", "1", "--n-ctx", "512", *extra_args])


def start_model_cluster(folder: Path, nodes: int, extra_args: list[str]) -> Any:
    """``nodes`` nodes started with ``extra_args``, returned once each has loaded its chat and embedding
    models (stopped if any does not)."""
    from mcpdb.ops.localcluster import ClusterLayout, LocalCluster

    layout = ClusterLayout.fresh(nodes)
    layout.extra_args = extra_args
    cluster = LocalCluster(layout, folder)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=60)
        cluster.wait_models(timeout=180)
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5) as http:
            while any(http.get(url + "/v1/node").json()["inference"]["embedding"] != "ready" for url in cluster.urls()):
                if time.monotonic() > deadline:
                    raise TimeoutError("the embedding models did not load within 120 s")
                time.sleep(0.5)
    except BaseException:
        cluster.stop_all(graceful=False)
        raise
    return cluster


COLUMNS = ("load, memories/s", "vectors embedded/s", "namespace", "probes", "p50 s", "p99 s", "max s", "not found")


def rows(phases: dict[str, Any]) -> list[list[str]]:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return [
        [
            str(phase["load_per_s"]),
            f"{phase['embedded_per_s']:.0f}",
            namespace + (" (loaded)" if namespace == "bulk" else " (another tenant)"),
            str(phase[namespace]["probes"]),
            seconds(phase[namespace]["p50_s"]),
            seconds(phase[namespace]["p99_s"]),
            seconds(phase[namespace]["max_s"]),
            str(phase[namespace]["not_found"]),
        ]
        for phase in phases.values()
        for namespace in NAMESPACES
    ]
