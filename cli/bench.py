"""``mcpdb bench``: benchmarks that report mcpdb beside an anchor measured in the same run."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cli.common import console
from cli.errors import CliError

app = typer.Typer(help="Benchmarks (results in benchmarks/RESULTS.md).", no_args_is_help=True)


@app.command("raft")
def raft(seconds: float = typer.Option(8.0, help="Seconds per configuration.")) -> None:
    """pysyncobj's truncation of applied entries: stock vs mcpdb's guarded transport."""
    from benchmarks import raft_stress

    print(f"command: mcpdb bench raft --seconds {seconds:g}")
    print(raft_stress.report(seconds))


@app.command("kv")
def kv(duration: float = typer.Option(20.0, help="Seconds of load per scenario."),
       connections: int = typer.Option(32, help="wrk connections, spread over the 3 nodes."),
       trials: int = typer.Option(3, help="Leader kills per system for the failover figure."),
       durability: str = typer.Option("durable", help="mcpdb nodes' --durability."),
       out: Path = typer.Option(Path(""), help="Folder for results (default benchmarks/runs/kv-<time>).")) -> None:
    """mcpdb vs etcd 3.4 on loopback, loaded by wrk: writes, linearizable reads, failover."""
    from benchmarks import kv as kv_bench

    if duration <= 0 or connections < 3 or trials < 1:
        raise CliError("--duration must be positive, --connections at least 3, --trials at least 1")
    if durability not in ("durable", "fast"):
        raise CliError("--durability must be 'durable' or 'fast'")
    folder = out if str(out) else Path("benchmarks/runs") / time.strftime("kv-%Y%m%d-%H%M%S")
    settings = kv_bench.KvSettings(duration, connections, trials, durability, folder)
    command = (f"mcpdb bench kv --duration {duration:g} --connections {connections} --trials {trials} "
               f"--durability {durability}")
    with console.status("starting") as status:
        try:
            results = kv_bench.run(settings, lambda step: status.update(f"measuring {step}"))
        except (RuntimeError, TimeoutError) as error:
            raise CliError(str(error)) from None
    table = kv_bench.save(results, folder, command)
    print(table)  # markdown for RESULTS.md: unwrapped, whatever the terminal width
    console.print(f"saved {folder}/results.json, results.md, kv.png")
