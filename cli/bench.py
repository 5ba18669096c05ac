"""``mcpdb bench``: benchmarks that report mcpdb beside an anchor measured in the same run."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks (results in benchmarks/RESULTS.md).", no_args_is_help=True)


@app.command("raft")
def raft(seconds: float = typer.Option(8.0, help="Seconds per configuration.")) -> None:
    """pysyncobj's truncation of applied entries: stock vs mcpdb's guarded transport."""
    from benchmarks import raft_stress

    print(f"command: mcpdb bench raft --seconds {seconds:g}")
    print(raft_stress.report(seconds))
