"""``mcpdb node start``: run one node in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mcpdb.store.state_machine import DEFAULT_CHANGE_HISTORY
from mcpdb.node.config import ConfigError, NodeConfig, read_secret

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
    body_timeout: Annotated[float, typer.Option(
        help="Seconds a client may take to send a request body (then 408).")] = 10.0,
    compaction_entries: Annotated[int, typer.Option(help="Log entries that trigger a snapshot.")] = 50_000,
    change_history: Annotated[int, typer.Option(
        help="Changes kept for watches to resume from (oldest trimmed first).")] = DEFAULT_CHANGE_HISTORY,
    advertise_url: Annotated[Optional[str], typer.Option(help="HTTP URL other nodes and clients use.")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        help="A host name requests may address this node by besides its own (a reverse proxy's; repeat).")] = None,
    mcp_max_sessions: Annotated[int, typer.Option(help="MCP sessions this node keeps open at most.")] = 1000,
    mcp_sessions_per_token: Annotated[int, typer.Option(
        help="MCP sessions one token may keep open on this node (then 429).")] = 100,
    mcp_idle_timeout: Annotated[float, typer.Option(
        help="Seconds an MCP session with no request and no open stream is kept.")] = 300.0,
    unsafe_stale_reads: Annotated[bool, typer.Option(
        help="BREAKS LINEARIZABILITY: serve reads without a barrier (for testing the checker).")] = False,
    inference: Annotated[bool, typer.Option(
        help="Run a llama.cpp worker on this node (--no-inference: contexts only).")] = True,
    model: Annotated[Optional[Path], typer.Option(
        help="GGUF model file (default: the bundled Gemma 3 270M Q4_K_M).")] = None,
    n_ctx: Annotated[int, typer.Option(help="Model context window in tokens.")] = 4096,
    threads: Annotated[int, typer.Option(help="llama.cpp threads per generation.")] = 2,
    slots: Annotated[int, typer.Option(
        help="Concurrent generations, each keeping its own KV cache (a session prefix per slot).")] = 1,
    weight: Annotated[Optional[float], typer.Option(
        help="Scheduling weight (default: tokens/s measured when the model loads).")] = None,
    domain: Annotated[Optional[list[str]], typer.Option(help="Domain this node specialises in (repeat).")] = None,
    policy: Annotated[str, typer.Option(
        help="Scheduling policy when this node leads: affinity, weighted, least_connections, round_robin.")
    ] = "affinity",
    shed_threshold: Annotated[float, typer.Option(
        help="Affinity gives way when the session's node has this many more requests per slot "
             "than the least-loaded node.")] = 1.0,
    autoscale: Annotated[Optional[str], typer.Option(
        help="MIN:MAX inference workers; when this node leads it decides how many there should be "
             "(a provisioner acts on GET /v1/autoscale).")] = None,
    autoscale_target: Annotated[float, typer.Option(
        help="Requests in flight or queued per slot the autoscaler aims for.")] = 1.0,
    autoscale_cooldown: Annotated[float, typer.Option(
        help="Seconds after a change before the next one.")] = 15.0,
) -> None:
    """Start a node in the foreground; SIGTERM or Ctrl-C shuts it down gracefully."""
    from mcpdb.raft.replication import check_pysyncobj_version
    from mcpdb.node.server import serve

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
        max_body_bytes=max_body_bytes, body_timeout=body_timeout, compaction_min_entries=compaction_entries,
        change_history=change_history,
        advertise_url=advertise_url, allowed_hosts=list(allowed_host or []),
        mcp_max_sessions=mcp_max_sessions, mcp_sessions_per_token=mcp_sessions_per_token,
        mcp_idle_timeout=mcp_idle_timeout, unsafe_stale_reads=unsafe_stale_reads,
        inference=inference, model_path=str(model) if model else None, n_ctx=n_ctx, threads=threads,
        slots=slots, weight=weight, domains=list(domain or []), policy=policy, shed_threshold=shed_threshold,
        autoscale=autoscale, autoscale_target=autoscale_target, autoscale_cooldown=autoscale_cooldown,
    )
    config.validate()
    serve(config)
