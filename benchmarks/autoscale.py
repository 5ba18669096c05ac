"""Autoscaling benchmark: a load ramp up and down against a cluster whose workers are autoscaled,
beside the same ramp against the minimum number of workers kept fixed (the anchor), in the same run.

Three store-only voters decide (``--autoscale MIN:MAX``); worker replicas with
the bundled model, one llama.cpp thread each (cores / MAX), are started and
drained by a ``LocalProvisioner`` driven from this process. The offered load
is a number of concurrent chat clients (separate processes, each sending
requests back to back), stepped through ``phases``. Recorded once a second:
offered load, workers running, workers the leader sees live, and every
request's latency; reported: the time from the step up to the scale-up
decision and to the new worker serving, and the p95 latency of the high
phase once scaled, beside the fixed cluster's p95 over the same phase.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.plots import finish, run_folder, save_run
from benchmarks.stats import percentile
from mcpdb.client import Client
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster
from mcpdb.ops.provisioning import LocalProvisioner, ScaleController, threads_per_worker

Step = Any


@dataclass
class AutoscaleSettings:
    max_workers: int = 2
    cooldown: float = 10.0
    phases: list[tuple[int, float]] = field(
        default_factory=lambda: [(1, 30.0), (2, 30.0), (4, 60.0), (2, 30.0), (0, 40.0)]
    )
    max_tokens: int = 24
    out: Path | None = None

    def command(self) -> str:
        phases = ",".join(f"{clients}x{seconds:g}" for clients, seconds in self.phases)
        line = (
            f"mcpdb bench autoscale --max-workers {self.max_workers} --cooldown {self.cooldown:g} "
            f"--phases {phases} --max-tokens {self.max_tokens}"
        )
        return line + (f" --out {self.out}" if self.out else "")

    def folder(self) -> Path:
        return run_folder(self.out)

    def expected_s(self) -> float:
        return 2 * (sum(seconds for _, seconds in self.phases) + 40)

    @staticmethod
    def parse_phases(text: str) -> list[tuple[int, float]]:
        """``"1x30,4x70,1x40"`` -> [(1, 30.0), (4, 70.0), (1, 40.0)]."""
        phases = []
        for part in text.split(","):
            clients, sep, seconds = part.partition("x")
            if not sep or not clients.isdigit() or int(clients) < 0:
                raise ValueError(f"--phases takes CLIENTSxSECONDS,... e.g. 1x30,4x70,1x40; got {text!r}")
            phases.append((int(clients), float(seconds)))
        return phases


def offered(phases: list[tuple[int, float]], elapsed: float) -> int:
    """Concurrent clients the schedule asks for ``elapsed`` seconds in (0 after the end)."""
    for clients, seconds in phases:
        if elapsed < seconds:
            return clients
        elapsed -= seconds
    return 0


def _client(
    index: int, url: str, model: str, phases: list[tuple[int, float]], started: float, max_tokens: int
) -> list[dict[str, Any]]:
    """One client process: while the schedule has room for it, chat requests back to back."""
    done: list[dict[str, Any]] = []
    total = sum(seconds for _, seconds in phases)
    with httpx.Client(timeout=300) as http:
        while (now := time.time()) - started < total:
            if offered(phases, now - started) <= index:
                time.sleep(0.2)
                continue
            response = http.post(
                url + "/v1/chat/completions",
                json={
                    "model": model,
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"Describe a harbour at dawn ({index}, {len(done)})."}],
                },
            )
            done.append(
                {
                    "at": now - started,
                    "latency_s": time.time() - now,
                    "status": response.status_code,
                    "node": response.headers.get("x-mcpdb-node"),
                }
            )
    return done


def ramp(settings: AutoscaleSettings, bounds: str, root: Path, step: Step, label: str) -> dict[str, Any]:
    """The schedule against one cluster with ``--autoscale bounds``; a timeline and every request."""
    layout = ClusterLayout.fresh(3)
    layout.extra_args = ["--no-inference", "--autoscale", bounds, "--autoscale-cooldown", str(settings.cooldown)]
    cluster = LocalCluster(layout, root / label)
    provisioner = LocalProvisioner(cluster, ["--inference", "--threads", str(threads_per_worker(settings.max_workers))])
    timeline: list[dict[str, Any]] = []
    stop = threading.Event()
    try:
        cluster.start_all()
        cluster.wait_ready(60)
        with Client(cluster.urls(), deadline=10) as client:
            controller = ScaleController(client, provisioner)
            step(f"{label}: first worker", 20)
            deadline = time.monotonic() + 120
            while not client.models():
                controller.step()
                if time.monotonic() > deadline:
                    raise TimeoutError("the first worker did not load its model within 120 s")
                time.sleep(0.5)
            model = client.models()[0]
            started = time.time()

            def control() -> None:
                while not stop.wait(1.0):
                    controller.step()
                    status = client.autoscale()
                    timeline.append(
                        {
                            "at": time.time() - started,
                            "offered": offered(settings.phases, time.time() - started),
                            "running": provisioner.running(),
                            "live": status.get("workers"),
                            "desired": status.get("desired"),
                        }
                    )

            watcher = threading.Thread(target=control, daemon=True)
            watcher.start()
            step(f"{label}: load ramp", sum(seconds for _, seconds in settings.phases))
            clients = max(clients for clients, _ in settings.phases)
            with multiprocessing.get_context("spawn").Pool(clients) as pool:
                results = pool.starmap(
                    _client,
                    [
                        (i, cluster.urls()[i % 3], model, settings.phases, started, settings.max_tokens)
                        for i in range(clients)
                    ],
                )
            stop.set()
            watcher.join(timeout=30)
    finally:
        stop.set()
        provisioner.scale_to(0)
        cluster.stop_all(graceful=False)
    requests = sorted((r for chunk in results for r in chunk), key=lambda r: r["at"])
    return {"bounds": bounds, "timeline": timeline, "requests": requests}


def settings_min(run: dict[str, Any]) -> int:
    return int(run["bounds"].split(":")[0])


def summarise(settings: AutoscaleSettings, scaled: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """The first step up in load: time to the scale-up decision and to the new worker serving, p95 from
    the step until it served; p95 over the peak phase and over the whole ramp, beside the fixed cluster
    (the anchor); the time to scale back down once the last phase began."""
    starts = [sum(seconds for _, seconds in settings.phases[:i]) for i in range(len(settings.phases))]
    step = next((i for i in range(1, len(settings.phases)) if settings.phases[i][0] > settings.phases[i - 1][0]), None)
    timeline = scaled["timeline"]
    decided = live = None
    if step is not None:
        step_at = starts[step]
        before = [p["desired"] for p in timeline if p["at"] < step_at and p["desired"] is not None]
        base = before[-1] if before else settings_min(scaled)
        decided = next((p["at"] - step_at for p in timeline if p["at"] >= step_at and (p["desired"] or 0) > base), None)
        live = next((p["at"] - step_at for p in timeline if p["at"] >= step_at and (p["live"] or 0) > base), None)
    peak = max(range(len(settings.phases)), key=lambda i: settings.phases[i][0])
    peak_window = (starts[peak], starts[peak] + settings.phases[peak][1])
    end = starts[-1] + settings.phases[-1][1]
    scaled_down = next(
        (
            p["at"] - starts[-1]
            for p in timeline
            if p["at"] >= starts[-1] and (p["running"] or 0) <= settings_min(scaled)
        ),
        None,
    )

    def p95(run: dict[str, Any], start: float, stop: float) -> float | None:
        return percentile([r["latency_s"] for r in run["requests"] if start <= r["at"] < stop], 0.95)

    return {
        "step_at_s": starts[step] if step is not None else None,
        "scale_up_decision_s": decided,
        "scale_up_serving_s": live,
        "p95_step_until_serving_s": p95(scaled, starts[step], starts[step] + live) if live else None,
        "p95_peak_s": p95(scaled, *peak_window),
        "fixed_p95_peak_s": p95(fixed, *peak_window),
        "p95_all_s": p95(scaled, 0, end),
        "fixed_p95_all_s": p95(fixed, 0, end),
        "scale_down_after_idle_s": scaled_down,
        "failed_requests": sum(1 for run in (scaled, fixed) for r in run["requests"] if r["status"] != 200),
        "requests": {"autoscaled": len(scaled["requests"]), "fixed": len(fixed["requests"])},
        "max_workers_seen": max((p["live"] or 0) for p in timeline) if timeline else 0,
    }


def run(settings: AutoscaleSettings, step: Step) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mcpdb-bench-autoscale-") as tmp:
        scaled = ramp(settings, f"1:{settings.max_workers}", Path(tmp), step, "autoscaled")
        fixed = ramp(settings, "1:1", Path(tmp), step, "fixed 1 worker")
    return {
        "command": settings.command(),
        "settings": {"max_workers": settings.max_workers, "cooldown_s": settings.cooldown, "phases": settings.phases},
        "summary": summarise(settings, scaled, fixed),
        "autoscaled": scaled,
        "fixed": fixed,
    }


def rows(results: dict[str, Any]) -> list[list[str]]:
    s = results["summary"]

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    def ratio(mine: float | None, anchor: float | None) -> str:
        return f"{mine / anchor:.2f}x" if mine and anchor else "-"

    return [
        ["time from the first step up to the scale-up decision", secs(s["scale_up_decision_s"]), "", ""],
        ["time from the first step up to the new worker serving", secs(s["scale_up_serving_s"]), "", ""],
        ["p95 latency from the step until the new worker served", secs(s["p95_step_until_serving_s"]), "", ""],
        [
            "p95 latency in the peak phase (anchor: 1 fixed worker)",
            secs(s["p95_peak_s"]),
            secs(s["fixed_p95_peak_s"]),
            ratio(s["p95_peak_s"], s["fixed_p95_peak_s"]),
        ],
        [
            "p95 latency over the whole ramp (anchor: 1 fixed worker)",
            secs(s["p95_all_s"]),
            secs(s["fixed_p95_all_s"]),
            ratio(s["p95_all_s"], s["fixed_p95_all_s"]),
        ],
        [
            "requests completed",
            str(s["requests"]["autoscaled"]),
            str(s["requests"]["fixed"]),
            ratio(s["requests"]["autoscaled"], s["requests"]["fixed"]),
        ],
        [
            "time from the idle phase's start to the extra workers drained and stopped",
            secs(s["scale_down_after_idle_s"]),
            "",
            "",
        ],
        ["failed requests (both runs)", str(s["failed_requests"]), "", ""],
    ]


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Command: `{results['command']}`", "", "| metric | autoscaled | anchor | ratio |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines) + "\n"


def _windowed_p95(requests: list[dict[str, Any]], width: float, end: float) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    at = 0.0
    while at < end:
        value = percentile([r["latency_s"] for r in requests if at <= r["at"] < at + width], 0.95)
        if value is not None:
            xs.append(at + width / 2)
            ys.append(value)
        at += width
    return xs, ys


def plot(results: dict[str, Any], path: Path) -> None:
    """Offered load, workers and p95 latency over time, autoscaled beside fixed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scaled, fixed = results["autoscaled"], results["fixed"]
    end = sum(seconds for _, seconds in results["settings"]["phases"])
    fig, (load, latency) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    timeline = scaled["timeline"]
    load.step(
        [p["at"] for p in timeline],
        [p["offered"] for p in timeline],
        where="post",
        color="black",
        label="offered load (concurrent clients)",
    )
    load.step(
        [p["at"] for p in timeline],
        [p["desired"] for p in timeline],
        where="post",
        color="tab:purple",
        ls="--",
        label="workers desired (leader)",
    )
    load.step(
        [p["at"] for p in timeline],
        [p["live"] for p in timeline],
        where="post",
        color="tab:blue",
        lw=2,
        label="workers serving",
    )
    load.set_ylabel("clients / workers")
    load.set_ylim(0, max(p["offered"] for p in timeline) + 1)
    load.legend(loc="upper right")
    load.set_title("autoscaled cluster: load and worker count")
    for run, color, name in ((scaled, "tab:blue", "autoscaled"), (fixed, "tab:orange", "fixed: 1 worker")):
        xs, ys = _windowed_p95(run["requests"], 5.0, end)
        latency.plot(xs, ys, "o-", ms=3, color=color, label=f"{name}, p95 per 5 s")
    latency.set_ylabel("latency, s")
    latency.set_xlabel("seconds since the ramp started")
    latency.legend(loc="upper right")
    finish(fig, path, results["command"])


def save(results: dict[str, Any], folder: Path) -> None:
    save_run(folder, results, markdown(results), plot, "autoscale.png")
