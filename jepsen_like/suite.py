"""Every nemesis in turn with both workloads, plus the unsafe-reads control; one markdown table.

    python -m jepsen_like.suite --time 20            # the short pass (as in CI)
    python -m jepsen_like.suite --time 600           # the soak: 10 minutes per nemesis

Each run's report folder lands under ``--out``; the table (and the exact
command) is printed and, with ``--record FILE``, written to FILE.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from jepsen_like import report
from jepsen_like.nemesis import NEMESES
from jepsen_like.netlab import availability
from jepsen_like.runner import RunConfig, run

console = Console(stderr=True)


def _row(label: str, summary: dict, seconds: float) -> str:
    verdict = "none" if summary["anomalies"] == 0 else f"**{summary['anomalies']}**"
    return (
        f"| {label} | {seconds:.0f} | {summary['attempted']} | {summary['acknowledged']} | "
        f"{summary['failed']} | {summary['indeterminate']} | {summary['longest_without_ack_s']} | {verdict} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every nemesis with both workloads.")
    parser.add_argument("--time", type=float, default=20.0, help="seconds per nemesis")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("jepsen-runs") / time.strftime("suite-%Y%m%d-%H%M%S"))
    parser.add_argument("--record", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    network = availability()
    lines = [
        f"Command: `python -m jepsen_like.suite --time {args.time:g} --concurrency {args.concurrency}` "
        f"({'network namespaces' if network is None else 'loopback: ' + network}; 3 voters; "
        "workloads register + list-append)",
        "",
        "| nemesis | s | ops | acknowledged | failed | indeterminate | longest without ack (s) | anomalies |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failures = 0
    runs = [(name, False) for name in sorted(NEMESES) if network is None or not NEMESES[name].needs_network]
    runs.append(("partition-leader" if network is None else "pause", True))
    for name, unsafe in runs:
        label = f"{name} + --unsafe-stale-reads (must be caught)" if unsafe else name
        console.print(f"[bold]running[/] {label} for {args.time:g} s")
        folder = args.out / (f"{name}-unsafe" if unsafe else name)
        config = RunConfig(
            nemeses=[name],
            workloads=["register"] if unsafe else ["register", "list-append"],
            time_s=args.time,
            concurrency=args.concurrency,
            out=folder,
            unsafe_stale_reads=unsafe,
            fault_s=5 if unsafe else 4,
            heal_s=2 if unsafe else 3,
        )
        result = run(config)
        summary = report.write(result, folder)
        lines.append(_row(label, summary, args.time))
        if result.valid == unsafe:
            failures += 1
    table = "\n".join(lines)
    print(table)
    if args.record:
        args.record.write_text(table + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
