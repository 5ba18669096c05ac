"""The KV benchmark's figure: throughput, p99 latency and failover, mcpdb beside etcd."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

SYSTEMS = (("mcpdb", "tab:blue"), ("etcd", "tab:orange"))
LOADS = ("writes", "reads")


def finish(fig: Any, path: Path, command: str) -> None:
    """Title a benchmark's figure with the command that produced it, save it and free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(command, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_folder(out: Path | None) -> Path:
    """Where a run's files go: ``--out``, else benchmarks/runs/<start time> (not committed)."""
    return out or Path(__file__).resolve().parent / "runs" / time.strftime("%Y%m%d-%H%M%S")


def save_run(folder: Path, results: dict[str, Any], markdown: str, draw: Any, figure: str) -> None:
    """A run's folder: results.json, results.md and the figure ``draw(results, path)`` makes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (folder / "results.md").write_text(markdown)
    draw(results, folder / figure)


def plot(results: dict[str, Any], path: Path, failover_target_s: float) -> None:
    """Three panels; the failover panel shows every trial as a dot over the bar of the worst one."""
    import matplotlib

    matplotlib.use("Agg")  # no display; imported late so the CLI starts without matplotlib
    import matplotlib.pyplot as plt

    fig, (throughput, p99, failover) = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, title, unit, value in (
        (throughput, "throughput (2xx answers)", "requests/s", lambda load: load["ok_per_s"]),
        (p99, "p99 latency", "ms", lambda load: load["latency_ms"]["p99"]),
    ):
        for offset, (system, color) in zip((-0.2, 0.2), SYSTEMS, strict=True):
            ax.bar(
                [i + offset for i in range(len(LOADS))],
                [value(results[system][load]) for load in LOADS],
                width=0.4,
                label=system,
                color=color,
            )
        ax.set_xticks(range(len(LOADS)), ["writes (1 KiB)", "linearizable reads"])
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # headroom for the legend
        ax.legend(loc="upper left", ncols=2)
    for position, (system, color) in enumerate(SYSTEMS):
        trials = [t for t in results[system]["failover_s"] if t is not None]
        failover.bar(position, max(trials, default=0), color=color, alpha=0.6)
        failover.scatter([position] * len(trials), trials, color="black", zorder=3, s=14)
    failover.set_xticks(range(len(SYSTEMS)), [system for system, _ in SYSTEMS])
    failover.axhline(failover_target_s, color="black", ls="--", lw=1, label="target (mcpdb)")
    failover.set_title("failover: kill -9 leader to next ack")
    failover.set_ylabel("s (dots: trials)")
    failover.set_ylim(0, max(failover.get_ylim()[1], failover_target_s) * 1.25)
    failover.legend(loc="upper left")
    finish(fig, path, results["command"])
