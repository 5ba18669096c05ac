"""KV benchmark: a 3-node mcpdb cluster beside a 3-member etcd 3.4 cluster, in one run.

Both clusters run on loopback for the whole run, but only one is loaded at
a time (they would otherwise share the two cores). The same scenario is
measured on both back to back, so background load on a shared machine
drifts less between the two figures that are compared:

- writes: 1 KiB values to rotating ids (mcpdb: memory contexts; etcd: keys);
- reads: linearizable reads of one id (mcpdb's default consistency; etcd's
  default range, not serializable);
- failover: kill -9 of the leader under a continuous write load, time to the
  next acknowledged write (``failover.py``), several trials each.

Beside each load, the CPU seconds its members used (user and system, from
/proc through psutil), reported per member and per 1,000 acknowledged
requests: three members and wrk share two cores here, so a request's CPU
across the cluster bounds the rate as much as any latency does.

wrk loads the nodes with the same connection count spread over the three
nodes (``wrk.py``). Targets (issue 2): mcpdb writes >= 0.5x etcd,
linearizable reads >= 1.0x, p99 within 2x etcd's, failover <= 2 s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks import compare, failover, plots, wrk
from benchmarks.compare import ratio, relative, row
from benchmarks.systems import Etcd, Mcpdb, System

INSTALL = "apt-get update && apt-get install -y etcd-server etcd-client wrk"
WRITE_TARGET, READ_TARGET, P99_TARGET, FAILOVER_TARGET_S = 0.5, 1.0, 2.0, 2.0
SCENARIOS = (("writes", "write_scenario"), ("reads", "read_scenario"))
START_S, TRIAL_S = 8.0, 9.0  # rough seconds for starting both clusters and for one failover trial (progress only)

# A step of the run: its label and roughly how many seconds it takes.
Step = Callable[[str, float], None]


@dataclass
class KvSettings:
    duration_s: float = 20.0
    connections: int = 32
    trials: int = 3
    durability: str = "durable"
    out: Path | None = None  # None: benchmarks/runs/<timestamp>

    def command(self) -> str:
        """The command line that repeats this run."""
        line = (
            f"mcpdb bench kv --duration {self.duration_s:g} --connections {self.connections} "
            f"--trials {self.trials} --durability {self.durability}"
        )
        return line + (f" --out {self.out}" if self.out else "")

    def folder(self) -> Path:
        return plots.run_folder(self.out)

    def expected_s(self) -> float:
        """Rough length of the whole run, for the progress bar."""
        return START_S + 2 * len(SCENARIOS) * self.duration_s + 2 * self.trials * TRIAL_S


def missing_tools() -> list[str]:
    return [tool for tool in ("etcd", "wrk") if shutil.which(tool) is None]


def require_tools() -> None:
    """One line naming what is missing and how to install it."""
    if missing := missing_tools():
        raise RuntimeError(f"{' and '.join(missing)} not installed; as root: {INSTALL}")


def run(settings: KvSettings, step: Step) -> dict[str, Any]:
    """Measure both systems; the results with ratios, targets and verdicts (``rows``)."""
    require_tools()
    results: dict[str, Any] = {
        "command": settings.command(),
        "settings": asdict(settings),
        "environment": environment(),
    }
    step("starting etcd and mcpdb", START_S)
    with (
        tempfile.TemporaryDirectory(prefix="mcpdb-bench-") as tmp,
        Etcd(Path(tmp) / "etcd") as etcd,
        Mcpdb(Path(tmp) / "mcpdb", settings.durability) as mcpdb,
    ):
        systems: list[System] = [etcd, mcpdb]
        measured: dict[str, dict[str, Any]] = {system.name: {} for system in systems}
        for label, scenario in SCENARIOS:
            for system in systems:
                step(f"{system.name} {label}", settings.duration_s)
                members = [psutil.Process(pid) for pid in system.pids()]
                before = _cpu_seconds(members)
                load = wrk.run(system.urls(), getattr(system, scenario), settings.connections, settings.duration_s)
                measured[system.name][label] = {
                    **load.to_dict(),
                    "cpu_s_per_member": (_cpu_seconds(members) - before) / len(members),
                }
        for system in systems:
            measured[system.name]["failover_s"] = []
            for number in range(1, settings.trials + 1):
                step(f"{system.name} failover {number}/{settings.trials}", TRIAL_S)
                measured[system.name]["failover_s"].append(failover.trial(system))
            measured[system.name]["findings"] = system.findings()
    results.update(measured)
    results["environment"]["loadavg_after"] = os.getloadavg()
    results["rows"] = rows(measured["mcpdb"], measured["etcd"])
    return results


def _cpu_seconds(members: list[psutil.Process]) -> float:
    """User and system CPU seconds the ``members`` used so far, together."""
    return sum(sum(member.cpu_times()[:2]) for member in members)


def _cpu_per_thousand(measured: dict[str, Any], label: str) -> float | None:
    """A member's CPU seconds per 1,000 acknowledged requests of the ``label`` load."""
    load = measured[label]
    return 1000 * load["cpu_s_per_member"] / load["ok"] if load["ok"] else None


def environment() -> dict[str, Any]:
    """What the figures depend on besides the code: versions, cores, and how busy the machine was."""
    return {**compare.environment(), "wrk": wrk.version()}


def rows(mcpdb: dict[str, Any], etcd: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per compared metric: values, mcpdb/etcd ratio, target and whether mcpdb meets it.

    Rows without a target are reported, not judged (``pass`` is None).
    """

    def pair(label: str, key: str) -> tuple[float, float]:
        return mcpdb[label][key], etcd[label][key]

    def latency(label: str, key: str) -> tuple[float, float]:
        return mcpdb[label]["latency_ms"][key], etcd[label]["latency_ms"][key]

    def cpu(label: str) -> tuple[float | None, float | None]:
        return _cpu_per_thousand(mcpdb, label), _cpu_per_thousand(etcd, label)

    failover_max = tuple(None if None in s["failover_s"] else max(s["failover_s"]) for s in (mcpdb, etcd))
    mine = failover_max[0]
    return [
        relative("writes/s (2xx)", *pair("writes", "ok_per_s"), WRITE_TARGET),
        relative("write p50 ms", *latency("writes", "p50")),
        relative("write p99 ms", *latency("writes", "p99"), P99_TARGET, higher=False),
        row("write failures", *pair("writes", "failed")),
        relative("CPU s per 1,000 writes per node", *cpu("writes")),
        relative("linearizable reads/s (2xx)", *pair("reads", "ok_per_s"), READ_TARGET),
        relative("read p50 ms", *latency("reads", "p50")),
        relative("read p99 ms", *latency("reads", "p99"), P99_TARGET, higher=False),
        row("read failures", *pair("reads", "failed")),
        relative("CPU s per 1,000 reads per node", *cpu("reads")),
        row(
            f"failover s (max of {len(mcpdb['failover_s'])})",
            *failover_max,
            ratio(*failover_max),
            f"<= {FAILOVER_TARGET_S:g} s",
            mine is not None and mine <= FAILOVER_TARGET_S,
        ),
    ]


def details(results: dict[str, Any]) -> str:
    """What the table summarises: every failover trial, failures by kind, findings in the logs."""
    lines = []
    for name in ("mcpdb", "etcd"):
        trials = ", ".join("none" if t is None else f"{t:.2f}" for t in results[name]["failover_s"])
        failures = [
            f"{label} {kind} x{count}"
            for label, _ in SCENARIOS
            for kind, count in [
                *results[name][label]["statuses"].items(),
                *results[name][label]["socket_errors"].items(),
            ]
            if count and not kind.startswith("2")
        ]
        findings = "".join(f"; {key.replace('_', ' ')}: {value}" for key, value in results[name]["findings"].items())
        lines.append(
            f"{name}: failover trials (s) {trials}; failures (status or socket error): "
            f"{', '.join(failures) or 'none'}{findings}"
        )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The table for benchmarks/RESULTS.md, with the command that produced it."""
    lines = [f"Command: `{results['command']}`", "", *compare.markdown_table(results["rows"])]
    return "\n".join([*lines, "", details(results)])


def save(results: dict[str, Any], folder: Path) -> None:
    """results.json, results.md and kv.png in ``folder``."""
    plots.save_run(
        folder, results, markdown(results) + "\n", lambda run, path: plots.plot(run, path, FAILOVER_TARGET_S), "kv.png"
    )
