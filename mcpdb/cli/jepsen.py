"""``mcpdb jepsen``: run the fault-injection harness and print its verdict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mcpdb.cli.checkout import source_checkout
from mcpdb.cli.errors import CliError

if TYPE_CHECKING:
    from jepsen_like.runner import RunResult

console = Console()


def jepsen(
    nemesis: Annotated[
        str, typer.Option(help="Comma-separated: partition, partition-leader, bridge, kill, pause, crash, slow, lossy.")
    ] = "partition,kill,pause",
    workload: Annotated[
        str, typer.Option(help="Comma-separated: register, list-append, chat (chat loads the model on every node).")
    ] = "register",
    time_s: Annotated[float, typer.Option("--time", help="Seconds of load.")] = 60.0,
    concurrency: Annotated[int, typer.Option(help="Concurrent clients.")] = 10,
    nodes: Annotated[int, typer.Option(help="Voters in the cluster under test.")] = 3,
    out: Annotated[Path, typer.Option(help="Report folder (default: jepsen-runs/<timestamp>).")] = Path(""),
    fault_s: Annotated[float, typer.Option(help="Seconds each fault lasts.")] = 5.0,
    heal_s: Annotated[float, typer.Option(help="Seconds of healing between faults.")] = 5.0,
    combined: Annotated[bool, typer.Option(help="Inject every listed nemesis at once in each window.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed for the schedule and the clients.")] = 0,
    loopback: Annotated[bool, typer.Option(help="Run on loopback even if namespaces are available.")] = False,
    unsafe_stale_reads: Annotated[
        bool, typer.Option(help="Start every node with --unsafe-stale-reads: the checkers must catch it.")
    ] = False,
    preload: Annotated[
        int, typer.Option(help="1 KiB memory contexts to load before the run (faults at scale), e.g. 1000000.")
    ] = 0,
    compact: Annotated[bool, typer.Option(help="Force a snapshot on every node in every fault window.")] = False,
    background_load: Annotated[
        bool,
        typer.Option(
            help="Post 200-record batches into a namespace of their own throughout: reads of the workloads' "
            "namespaces (one per key) then skip entries of another namespace not yet applied."
        ),
    ] = False,
) -> None:
    """Run workloads against a real cluster under faults; exit non-zero on any anomaly."""
    with source_checkout("mcpdb jepsen", "jepsen_like"):
        from jepsen_like import report
        from jepsen_like.runner import RunConfig, run

    if time_s <= 0 or concurrency < 1 or nodes < 1:
        raise CliError("--time, --concurrency and --nodes must be positive")
    if preload < 0:
        raise CliError("--preload must be 0 or more")
    folder = out if str(out) else Path("jepsen-runs") / time.strftime("%Y%m%d-%H%M%S")
    config = RunConfig(
        nemeses=[n.strip() for n in nemesis.split(",") if n.strip()],
        workloads=[w.strip() for w in workload.split(",") if w.strip()],
        time_s=time_s,
        concurrency=concurrency,
        nodes=nodes,
        out=folder,
        unsafe_stale_reads=unsafe_stale_reads,
        fault_s=fault_s,
        heal_s=heal_s,
        combined=combined,
        seed=seed,
        use_namespaces=not loopback,
        preload=preload,
        compact=compact,
        background_load=background_load,
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[ops]} ops"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(
            f"starting cluster, loading {preload:,} contexts" if preload else "starting cluster", total=time_s, ops=0
        )

        def on_progress(elapsed: float, ops: int) -> None:
            progress.update(task, completed=min(elapsed, time_s), ops=ops, description="running")

        try:
            result = run(config, on_progress)
        except ValueError as error:
            raise CliError(str(error)) from None
        progress.update(task, description="checking")
        summary = report.write(result, folder)
    _print(summary, result, folder)
    if not summary["valid"]:
        raise typer.Exit(1)


def _print(summary: dict[str, Any], result: RunResult, folder: Path) -> None:
    table = Table(title="mcpdb jepsen", show_header=False)
    network = "network namespaces" if result.namespaces else "loopback (no namespaces)"
    rows = [
        ("workloads", ", ".join(result.config.workloads)),
        ("nemeses", ", ".join(result.config.nemeses) + f" on {network}"),
        ("operations attempted", str(summary["attempted"])),
        ("acknowledged", str(summary["acknowledged"])),
        ("failed", str(summary["failed"])),
        ("indeterminate", str(summary["indeterminate"])),
        ("longest time without an ack", f"{summary['longest_without_ack_s']} s"),
        ("fault windows", str(sum(1 for w in result.windows if w.nemesis != "compact"))),
    ]
    if summary["preloaded"]:
        rows.append(("preloaded contexts", f"{summary['preloaded']:,}"))
    if summary["compactions"]:
        rows.append(("forced snapshot rounds", str(summary["compactions"])))
    if result.config.background_load:
        rows.append(("background batches acknowledged", str(summary["background_batches"])))
        rows.append(("reads answered ahead of their node's apply", str(summary["reads_served_ahead"])))
    for name, seconds in summary["recovery_s"].items():
        unknown = "none: not whole within 180 s, or the run ended first"
        rows.append((f"recovery after {name}", unknown if seconds is None else f"{seconds} s"))
    for name, verdict in summary["verdicts"].items():
        rows.append((f"check {name}", "[green]valid[/]" if verdict is True else f"[red]{verdict}[/]"))
    rows.append(("anomalies", f"[{'green' if summary['anomalies'] == 0 else 'red'}]{summary['anomalies']}[/]"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(f"report: {folder}/results.json, {folder}/history.jsonl, {folder}/latency.png")
