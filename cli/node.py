"""``mcpdb node start``: run one node in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nodes.config import ConfigError, NodeConfig, read_secret

app = typer.Typer(no_args_is_help=True)


# A callback keeps ``start`` a subcommand (typer collapses a lone command).
@app.callback()
def node() -> None:
    """Run a single node."""


@app.command("start")
def start(
    node_id: Annotated[str, typer.Option("--id", help="Unique node id, e.g. n1.")],
    data_dir: Annotated[Path, typer.Option(help="Directory for the LMDB store and Raft journal.")],
    http_addr: Annotated[str, typer.Option(help="HOST:PORT for REST.")],
    raft_addr: Annotated[Optional[str], typer.Option(help="HOST:PORT for Raft; omit with --replica.")] = None,
    peer: Annotated[Optional[list[str]], typer.Option(help="Raft HOST:PORT of another voter (repeat).")] = None,
    replica: Annotated[bool, typer.Option(help="Join as a non-voting replica (no --raft-addr).")] = False,
    token_file: Annotated[Optional[Path], typer.Option(help="File holding the bearer token (else MCPDB_TOKEN).")] = None,
    cluster_secret_file: Annotated[Optional[Path], typer.Option(
        help="File holding the Raft cluster secret (else MCPDB_CLUSTER_SECRET); encrypts Raft traffic.")] = None,
    durability: Annotated[str, typer.Option(
        help="'durable': fsync the journal before acknowledging; 'fast': rely on the page cache.")] = "durable",
    request_timeout: Annotated[float, typer.Option(help="Seconds before a write or read barrier gets 503.")] = 3.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest accepted request body.")] = 1 << 20,
    compaction_entries: Annotated[int, typer.Option(help="Log entries that trigger a snapshot.")] = 50_000,
    advertise_url: Annotated[Optional[str], typer.Option(help="HTTP URL other nodes and clients use.")] = None,
    unsafe_stale_reads: Annotated[bool, typer.Option(
        help="BREAKS LINEARIZABILITY: serve reads without a barrier (for testing the checker).")] = False,
) -> None:
    """Start a node in the foreground; SIGTERM or Ctrl-C shuts it down gracefully."""
    from mcpdb.replication import check_pysyncobj_version
    from nodes.server import serve

    if durability not in ("durable", "fast"):
        raise ConfigError(f"--durability must be 'durable' or 'fast', got {durability!r}")
    if replica and raft_addr:
        raise ConfigError("a --replica has no --raft-addr (it does not vote)")
    if not replica and not raft_addr:
        raise ConfigError("--raft-addr is required (or use --replica)")
    try:
        check_pysyncobj_version()
    except RuntimeError as error:
        raise ConfigError(str(error)) from None
    config = NodeConfig(
        node_id=node_id, data_dir=str(data_dir), http_addr=http_addr,
        raft_addr=None if replica else raft_addr, peers=list(peer or []),
        token=read_secret(str(token_file) if token_file else None, "MCPDB_TOKEN"),
        cluster_secret=read_secret(str(cluster_secret_file) if cluster_secret_file else None,
                                   "MCPDB_CLUSTER_SECRET"),
        durable=durability == "durable", request_timeout=request_timeout,
        max_body_bytes=max_body_bytes, compaction_min_entries=compaction_entries,
        advertise_url=advertise_url, unsafe_stale_reads=unsafe_stale_reads,
    )
    config.validate()
    serve(config)
