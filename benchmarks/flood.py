"""Flood benchmark: one tenant's loaders never pause; do the others still get through?

An attacker needs nothing but a valid token scoped to its own namespace. A 3-node cluster
(``--no-inference --no-embedding``, a bootstrap token) and one write token per namespace:

- the flood: ``--attackers`` async clients, in ``--processes`` processes, sending 500-context
  batches (about 545 KB each) into ``hog`` without pause, ignoring Retry-After;
- a tenant: one 500-context batch at a time into ``tenant``, retrying a 503 after its Retry-After;
- an interactive client: a 1 KiB PUT, then a linearizable GET of the same key from the next node,
  every 50 ms, in ``interactive``.

Two phases of ``--seconds`` each, in one run: the tenant and the interactive client alone (the
anchor), then beside the flood (which begins ``RAMP_S`` before them and ends after them). Each
figure is reported beside the same figure without the flood.
At the end every node's copy of each namespace is counted: each must hold exactly the batches
answered 200 and none of the refused ones (a 503 must say ``applied: no``), and no linearizable read
may return a value older than the last acknowledged write.

The bulk lane's fairness (``mcpdb/raft/command_lanes.py``) and the gate's share per namespace
(``mcpdb/node/http/gate.py``) are what this measures: before them the tenant got 42 of its 64
attempts refused in 60 s (benchmarks/RESULTS.md, session 20).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks import compare, plots
from benchmarks.stats import percentile
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster

NAMESPACES = ("hog", "tenant", "interactive")
BATCH = 500
FACT = "x" * 1000  # about 1 KiB per context
PERIOD_S = 0.05  # the interactive client's pace
TIMEOUT_S = 30.0  # a client's own timeout: far past the nodes' request timeout, so theirs answers
START_S, SETTLE_S = 15.0, 20.0  # rough seconds to start the cluster and to count every node's copies
RAMP_S = 3.0  # the flood runs this long before the tenants' phase begins and after it ends

# One request: (phase, client, wall-clock start, seconds, status or error name, applied, batch id).
Record = tuple[str, str, float, float, int | str, str | None, str]
Step = Callable[[str, float], None]


@dataclass
class FloodSettings:
    seconds: float = 30.0
    attackers: int = 28
    processes: int = 2
    out: Path | None = None

    def command(self) -> str:
        line = f"mcpdb bench flood --seconds {self.seconds:g} --attackers {self.attackers} --processes {self.processes}"
        return line + (f" --out {self.out}" if self.out else "")

    def folder(self) -> Path:
        return plots.run_folder(self.out)

    def expected_s(self) -> float:
        return START_S + 2 * self.seconds + 2 * RAMP_S + SETTLE_S


def _batch(batch_id: str) -> bytes:
    ops = [
        {"op": "put", "id": f"{batch_id}-{i:03d}", "context": {"kind": "memory", "facts": [FACT]}} for i in range(BATCH)
    ]
    return orjson.dumps({"ops": ops})


def _answer(response: httpx.Response) -> tuple[int | str, str | None]:
    try:
        applied = response.json().get("applied")
    except ValueError:
        applied = None
    return response.status_code, applied


# ---------------------------------------------------------------- clients (each in its own process)
def flood_main(urls: list[str], token: str, clients: int, first: int, seconds: float) -> list[Record]:
    """``clients`` async clients sending batches into ``hog`` until ``seconds`` pass, Retry-After ignored."""
    records: list[Record] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def client(number: int, deadline: float) -> None:
        async with httpx.AsyncClient(base_url=urls[number % len(urls)], timeout=TIMEOUT_S, headers=headers) as http:
            sent = 0
            while time.monotonic() < deadline:
                batch_id, sent = f"h{number:03d}b{sent:05d}", sent + 1
                body, started, wall = _batch(batch_id), time.monotonic(), time.time()
                try:
                    status, applied = _answer(await http.post("/v1/namespaces/hog/batch", content=body))
                except httpx.HTTPError as error:
                    status, applied = type(error).__name__, None
                records.append(("flood", "hog", wall, time.monotonic() - started, status, applied, batch_id))

    async def all_clients() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client(first + number, deadline) for number in range(clients)))

    asyncio.run(all_clients())
    return records


def tenant_main(urls: list[str], token: str, phase: str, seconds: float) -> list[Record]:
    """One batch at a time into ``tenant``, over the nodes in turn; a 503 is retried after Retry-After.
    Each attempt is a record; a batch's id tells its attempts apart from the next batch's."""
    records: list[Record] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    deadline, sent, attempt = time.monotonic() + seconds, 0, 0
    with httpx.Client(timeout=TIMEOUT_S, headers=headers) as http:
        while time.monotonic() < deadline:
            batch_id, sent = f"{phase[0]}{sent:05d}", sent + 1
            body = _batch(batch_id)
            while True:
                url, attempt = urls[attempt % len(urls)], attempt + 1
                started, wall = time.monotonic(), time.time()
                retry_after = 1.0
                try:
                    response = http.post(f"{url}/v1/namespaces/tenant/batch", content=body)
                    status, applied = _answer(response)
                    retry_after = float(response.headers.get("retry-after", "1"))
                except httpx.HTTPError as error:
                    status, applied = type(error).__name__, None
                records.append((phase, "tenant", wall, time.monotonic() - started, status, applied, batch_id))
                if status == 200 or time.monotonic() > deadline + TIMEOUT_S:
                    break
                time.sleep(retry_after)
    return records


def interactive_main(urls: list[str], token: str, phase: str, seconds: float) -> tuple[list[Record], int]:
    """A PUT and a linearizable GET from the next node every ``PERIOD_S``; the reads that returned a
    value older than the last acknowledged write are counted (an unknown outcome may be newer)."""
    records: list[Record] = []
    stale, acknowledged = 0, -1
    headers = {"Authorization": f"Bearer {token}"}
    path = "/v1/namespaces/interactive/contexts/k"
    deadline, number = time.monotonic() + seconds, 0
    with httpx.Client(timeout=TIMEOUT_S, headers=headers) as http:
        while time.monotonic() < deadline:
            tick = time.monotonic()
            for operation, url in (("put", urls[number % len(urls)]), ("get", urls[(number + 1) % len(urls)])):
                started, wall = time.monotonic(), time.time()
                try:
                    if operation == "put":
                        response = http.put(url + path, json={"kind": "memory", "facts": [str(number)]})
                        if response.status_code in (200, 201):
                            acknowledged = number
                    else:
                        response = http.get(url + path, params={"consistency": "linearizable"})
                        if response.status_code == 200 and int(response.json()["facts"][0]) < acknowledged:
                            stale += 1
                    status, applied = _answer(response)
                except httpx.HTTPError as error:
                    status, applied = type(error).__name__, None
                records.append((phase, operation, wall, time.monotonic() - started, status, applied, str(number)))
            number += 1
            time.sleep(max(0.0, PERIOD_S - (time.monotonic() - tick)))
    return records, stale


# ---------------------------------------------------------------- the run
def run(settings: FloodSettings, step: Step) -> dict[str, Any]:
    results: dict[str, Any] = {
        "command": settings.command(),
        "settings": {**asdict(settings), "out": str(settings.out) if settings.out else None},
        "environment": compare.environment(),
    }
    with tempfile.TemporaryDirectory(prefix="mcpdb-bench-flood-") as scratch:
        layout = ClusterLayout.fresh(3)
        layout.extra_args = ["--no-inference", "--no-embedding"]
        root_token = "flood-bootstrap-" + str(time.time_ns())
        with LocalCluster(layout, Path(scratch), token=root_token) as cluster:
            step("starting 3 nodes", START_S)
            cluster.start_all()
            cluster.wait_ready(60)
            tokens = _tokens(cluster)
            urls = cluster.urls()
            terms_before = _terms(cluster)
            records: list[Record] = []
            stale = 0
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(settings.processes + 2, mp_context=spawn) as pool:
                list(pool.map(_ready, range(settings.processes + 2)))  # every process started and imported
                for phase in ("alone", "flood"):
                    step(f"tenants {'beside the flood' if phase == 'flood' else 'alone'}", settings.seconds)
                    futures: list[concurrent.futures.Future[Any]] = []
                    if phase == "flood":
                        futures += [
                            pool.submit(
                                flood_main, urls, tokens["hog"], len(share), share[0], settings.seconds + 2 * RAMP_S
                            )
                            for share in _shares(settings.attackers, settings.processes)
                        ]
                        time.sleep(RAMP_S)  # the flood under way before the tenants begin, and after they end
                    futures += [
                        pool.submit(tenant_main, urls, tokens["tenant"], phase, settings.seconds),
                        pool.submit(interactive_main, urls, tokens["interactive"], phase, settings.seconds),
                    ]
                    for future in futures:
                        outcome = future.result()
                        if isinstance(outcome, tuple):
                            outcome, stale_reads = outcome
                            stale += stale_reads
                        records += outcome
            step("counting every node's copy", SETTLE_S)
            results["copies"] = _copies(cluster, records)
            results["terms"] = {"before": terms_before, "after": _terms(cluster)}
    results["records"] = records
    results["stale_reads"] = stale
    results["rows"] = rows(results)
    return results


def _ready(_: int) -> None:
    """A worker process's first task: it has started and imported this module."""
    time.sleep(0.5)  # long enough that each of the pool's processes takes one


def _terms(cluster: LocalCluster) -> list[int | None]:
    """Each node's Raft term: a new one means an election."""
    return [(cluster.node_status(spec.node_id) or {}).get("term") for spec in cluster.layout.nodes]


def _shares(clients: int, processes: int) -> list[list[int]]:
    """The attackers' numbers, dealt over the processes."""
    return [share for share in (list(range(first, clients, processes)) for first in range(processes)) if share]


def _tokens(cluster: LocalCluster) -> dict[str, str]:
    """A write token for each namespace, scoped to it alone."""
    tokens = {}
    with cluster.client(10.0) as http:
        for namespace in NAMESPACES:
            response = http.post(
                cluster.urls()[0] + "/v1/tokens", json={"scopes": {namespace: "write"}, "description": "bench flood"}
            )
            response.raise_for_status()
            tokens[namespace] = response.json()["token"]
    return tokens


def _copies(cluster: LocalCluster, records: list[Record]) -> dict[str, Any]:
    """Each node's local copy of the batch namespaces, once all have applied the same index, against
    the batches answered 200."""
    deadline = time.monotonic() + 120
    with cluster.client(30.0) as http:
        while True:
            applied = {http.get(url + "/v1/node").json()["applied_index"] for url in cluster.urls()}
            if len(applied) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        copies: dict[str, Any] = {}
        for namespace, client in (("hog", "hog"), ("tenant", "tenant")):
            answered = {record[6] for record in records if record[1] == client and record[4] == 200}
            per_node = []
            for url in cluster.urls():
                held = Counter(context_id.rsplit("-", 1)[0] for context_id in _ids(http, url, namespace))
                per_node.append(
                    {
                        "batches": len(held),
                        "partial": sum(1 for count in held.values() if count != BATCH),
                        "missing": len(answered - set(held)),
                        "unanswered_present": len(set(held) - answered),
                    }
                )
            copies[namespace] = {"answered_200": len(answered), "nodes": per_node}
    return copies


def _ids(http: httpx.Client, url: str, namespace: str) -> list[str]:
    """Every context id of ``namespace`` as this node holds it (its local, stale read)."""
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, "consistency": "stale"}
        if cursor:
            params["cursor"] = cursor
        page = http.get(f"{url}/v1/namespaces/{namespace}/contexts", params=params).json()
        ids += [item["id"] for item in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return ids


# ---------------------------------------------------------------- what is reported
def _latencies(records: list[Record], phase: str, client: str) -> list[float]:
    return [record[3] * 1000 for record in records if record[0] == phase and record[1] == client]


def _tenant_batches(records: list[Record], phase: str) -> list[tuple[float, bool]]:
    """Each tenant batch's time from its first attempt to its last answer, and whether it got 200."""
    attempts: dict[str, list[Record]] = {}
    for record in records:
        if record[0] == phase and record[1] == "tenant":
            attempts.setdefault(record[6], []).append(record)
    return [(1000 * (tries[-1][2] + tries[-1][3] - tries[0][2]), tries[-1][4] == 200) for tries in attempts.values()]


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table: each figure beside the flood and alone (the anchor, same run), their ratio."""
    records = results["records"]
    seconds = results["settings"]["seconds"]
    table = []
    batches = {phase: _tenant_batches(records, phase) for phase in ("alone", "flood")}
    done = {phase: sum(1 for _, ok in batches[phase] if ok) / seconds for phase in batches}
    table.append(_row("tenant batches/s", done["flood"], done["alone"]))
    refused = {
        phase: sum(1 for r in records if r[0] == phase and r[1] == "tenant" and r[4] != 200) for phase in batches
    }
    table.append(
        _row("tenant attempts refused", refused["flood"], refused["alone"], target="= 0", passed=not refused["flood"])
    )
    for q in (0.5, 0.99):
        flood = percentile((ms for ms, _ in batches["flood"]), q)
        alone = percentile((ms for ms, _ in batches["alone"]), q)
        table.append(_row(f"tenant batch ms p{round(q * 100)} (retries included)", flood, alone))
    for operation in ("put", "get"):
        for q in (0.5, 0.99):
            flood = percentile(_latencies(records, "flood", operation), q)
            alone = percentile(_latencies(records, "alone", operation), q)
            table.append(_row(f"interactive {operation.upper()} ms p{round(q * 100)}", flood, alone))
    statuses = Counter(str(r[4]) for r in records if r[1] == "hog")
    table.append(_row("flood batches accepted", statuses.get("200", 0), None))
    table.append(_row("flood batches refused (503)", statuses.get("503", 0), None))
    table.append(
        _row(
            "flood refusal ms p50",
            percentile((r[3] * 1000 for r in records if r[1] == "hog" and r[4] == 503), 0.5),
            None,
        )
    )
    unsafe = sum(1 for r in records if r[4] not in (200, 201, 503) or (r[4] == 503 and r[5] != "no"))
    table.append(_row("answers neither 2xx nor 503 applied:no", unsafe, None, target="= 0", passed=not unsafe))
    wrong = sum(
        node["missing"] + node["unanswered_present"] + node["partial"]
        for copy in results["copies"].values()
        for node in copy["nodes"]
    )
    table.append(_row("batches wrong on some node", wrong, None, target="= 0", passed=not wrong))
    stale = results["stale_reads"]
    table.append(_row("stale linearizable reads", stale, None, target="= 0", passed=not stale))
    elections = results["terms"]["before"] != results["terms"]["after"]
    table.append(_row("elections", int(elections), None, target="= 0", passed=not elections))
    return table


def _row(
    metric: str, flood: float | None, alone: float | None, target: str = "", passed: bool | None = None
) -> dict[str, Any]:
    return compare.row(metric, flood, alone, compare.ratio(flood, alone), target, passed)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Command: `{results['command']}`", ""]
    lines += ["| metric | beside the flood | alone | flood/alone | target | met |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['metric']} | {compare.cell(r['mcpdb'])} | {compare.cell(r['etcd'])} | {compare.cell(r['ratio'])} | "
        f"{r['target']} | {compare.verdict(r['pass'])} |"
        for r in results["rows"]
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """The interactive client's and the tenant's latency over the run, the flood's phase shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = results["records"]
    start = min(record[2] for record in records)
    fig, axis = plt.subplots(figsize=(10, 4.5))
    for client, color in (("put", "tab:blue"), ("get", "tab:green"), ("tenant", "tab:red")):
        points = [(r[2] - start, r[3] * 1000) for r in records if r[1] == client]
        axis.scatter([t for t, _ in points], [ms for _, ms in points], s=4, color=color, label=client)
    flood = [(r[2] - start, r[2] - start + r[3]) for r in records if r[1] == "hog"]
    if flood:
        begun, ended = min(t for t, _ in flood), max(t for _, t in flood)
        axis.axvspan(begun, ended, color="tab:orange", alpha=0.12, label="flood")
    axis.set_yscale("log")
    axis.set_xlabel("seconds")
    axis.set_ylabel("latency ms")
    axis.legend(loc="upper left", markerscale=3)
    plots.finish(fig, path, results["command"])


def save(results: dict[str, Any], folder: Path) -> None:
    plots.save_run(folder, results, markdown(results), plot, "flood.png")
