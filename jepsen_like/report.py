"""The run's folder: history.jsonl, results.json and a plot people can read at a glance.

The plot has two panels over the run's time: latency of every completed
operation by type (failures and indeterminate outcomes marked), and
acknowledged operations per second; fault windows are shaded on both.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from jepsen_like.history import pairs  # noqa: E402
from jepsen_like.runner import RunResult  # noqa: E402


def _pairs(result: RunResult) -> list[tuple[Any, Any]]:
    return [(i, d) for i, d in pairs(result.recorder.ops) if d.time != float("inf")]


def summarise(result: RunResult) -> dict[str, Any]:
    """The figures the CLI prints and RESULTS.md records."""
    pairs = _pairs(result)
    outcomes = {"ok": 0, "fail": 0, "info": 0}
    for _, done in pairs:
        outcomes[done.type] = outcomes.get(done.type, 0) + 1
    acknowledged = sorted(done.time for _, done in pairs if done.type == "ok")
    edges = [0.0, *acknowledged, result.config.time_s]
    longest_gap = max((b - a for a, b in itertools.pairwise(edges)), default=result.config.time_s)
    anomalies = sum(len(check.get("anomalies", [])) for check in result.checks.values())
    recovery: dict[str, list[float | None]] = {}
    for window in result.windows:  # a heal the run's end cut short has no recovery to speak of
        if window.nemesis != "compact" and window.end is not None and window.end < result.config.time_s:
            recovery.setdefault(window.nemesis, []).append(window.recovered_s)
    return {
        "attempted": len(pairs),
        "acknowledged": outcomes["ok"],
        "failed": outcomes["fail"],
        "indeterminate": outcomes["info"],
        "longest_without_ack_s": round(longest_gap, 2),
        "anomalies": anomalies,
        "verdicts": {name: check.get("valid") for name, check in result.checks.items()},
        "valid": result.valid,
        # per nemesis, the slowest heal until every node was whole again (None: one was not within
        # nemesis.RECOVERY_LIMIT_S)
        "recovery_s": {
            name: None if None in times else round(max(t for t in times if t is not None), 2)
            for name, times in recovery.items()
        },
        "preloaded": result.preloaded.get("acknowledged", 0),
        "compactions": sum(1 for window in result.windows if window.nemesis == "compact"),
        "background_batches": result.background_batches,
        # since each node last started: a node the nemesis restarted counts from then
        "reads_served_ahead": result.reads_served_ahead,
    }


def write(result: RunResult, folder: Path) -> dict[str, Any]:
    """Write the report folder; returns the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    result.recorder.write_jsonl(folder / "history.jsonl")
    summary = summarise(result)
    result.summary = summary
    config = {**asdict(result.config), "out": str(result.config.out)}
    (folder / "results.json").write_text(
        json.dumps(
            {
                "config": config,
                "network_namespaces": result.namespaces,
                "summary": summary,
                "fault_windows": [asdict(w) for w in result.windows],
                "checks": result.checks,
                "final_reads": result.final_reads,
            },
            indent=2,
            default=str,
        )
    )
    _plot(result, folder / "latency.png")
    return summary


def _plot(result: RunResult, path: Path) -> None:
    pairs = _pairs(result)
    fig, (latency_ax, rate_ax) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for ax in (latency_ax, rate_ax):
        for window in result.windows:
            end = window.end if window.end is not None else result.config.time_s
            compacting = window.nemesis == "compact"
            ax.axvspan(window.start, end, color="tab:olive" if compacting else "tab:red", alpha=0.12, lw=0)
    kinds = sorted({invoke.f for invoke, _ in pairs})
    colours = dict(zip(kinds, ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"), strict=False))
    for kind in kinds:
        ok = [(i.time, (d.time - i.time) * 1000) for i, d in pairs if i.f == kind and d.type == "ok"]
        if ok:
            latency_ax.scatter(*zip(*ok, strict=True), s=4, color=colours[kind], label=f"{kind} ok", alpha=0.6)
    for outcome, marker, colour in (("fail", "x", "black"), ("info", "^", "tab:red")):
        points = [(i.time, (d.time - i.time) * 1000) for i, d in pairs if d.type == outcome]
        if points:
            latency_ax.scatter(*zip(*points, strict=True), s=14, marker=marker, color=colour, label=outcome)
    flagged = [
        a["cannot_linearize"]
        for check in result.checks.values()
        for a in check.get("anomalies", [])
        if "cannot_linearize" in a
    ]
    if flagged:
        latency_ax.scatter(
            [a["invoked"] for a in flagged],
            [max((a["completed"] - a["invoked"]) * 1000, 0.5) for a in flagged],
            s=160,
            marker="*",
            color="red",
            edgecolor="black",
            zorder=5,
            label="anomaly",
        )
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("latency (ms, log)")
    verdict = "no anomalies" if result.valid else "ANOMALIES FOUND"
    latency_ax.set_title(
        f"mcpdb jepsen: {', '.join(result.config.workloads)} under "
        f"{', '.join(result.config.nemeses)} ({verdict})\nshaded: faults"
        + (", snapshots (olive)" if result.config.compact else "")
        + (f"; {result.preloaded.get('acknowledged', 0):,} contexts preloaded" if result.preloaded else "")
    )
    latency_ax.legend(loc="upper right", fontsize=8, markerscale=2)
    seconds = int(result.config.time_s) + 1
    per_second = [0] * seconds
    for _, done in pairs:
        if done.type == "ok" and int(done.time) < seconds:
            per_second[int(done.time)] += 1
    rate_ax.bar(range(seconds), per_second, width=1.0, align="edge", color="tab:blue")
    rate_ax.set_ylabel("acks/s")
    rate_ax.set_xlabel("time since start (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
