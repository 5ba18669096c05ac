"""``node start``: the flags of one node, each defaulting to its ``NodeConfig`` field.

The one command-line surface of the node, shared by ``mcpdb node start`` (the CLI registers this
app) and ``python -m mcpdb.node start`` (which runs it without loading the CLI). Its defaults are
read from ``NodeConfig``, so the flags, their ``--help`` and a config built in code cannot drift.
At import it needs only typer and the config (no LMDB, pysyncobj or llama.cpp): ``mcpdb --help``
works from a plain ``pip install mcpdb``; the server is imported when a node starts.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mcpdb.node.config import ConfigError, NodeConfig, read_secret

_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}


def default(name: str) -> Any:
    """NodeConfig's default for ``name``, the one place a node's defaults are written."""
    value = _FIELDS[name].default
    if value is dataclasses.MISSING:
        raise TypeError(f"NodeConfig.{name} has no plain default")
    return value


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
    raft_addr: Annotated[str | None, typer.Option(help="HOST:PORT for Raft; omit with --replica.")] = None,
    peer: Annotated[list[str] | None, typer.Option(help="Raft HOST:PORT of another voter (repeat).")] = None,
    replica: Annotated[bool, typer.Option(help="Join as a non-voting replica (no --raft-addr).")] = False,
    token_file: Annotated[Path | None, typer.Option(help="File holding the bearer token (else MCPDB_TOKEN).")] = None,
    cluster_secret_file: Annotated[
        Path | None,
        typer.Option(help="File holding the Raft cluster secret (else MCPDB_CLUSTER_SECRET); encrypts Raft traffic."),
    ] = None,
    durability: Annotated[
        str, typer.Option(help="'durable': fsync the journal before acknowledging; 'fast': rely on the page cache.")
    ] = "durable" if default("durable") else "fast",
    request_timeout: Annotated[float, typer.Option(help="Seconds before a write or read barrier gets 503.")] = default(
        "request_timeout"
    ),
    max_body_bytes: Annotated[int, typer.Option(help="Largest accepted request body.")] = default("max_body_bytes"),
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a client may take to send a request body (then 408).")
    ] = default("body_timeout"),
    compaction_entries: Annotated[
        int, typer.Option(help="Log entries that trigger a snapshot (or half the store's records, if that is more).")
    ] = default("compaction_min_entries"),
    compaction_bytes: Annotated[
        int, typer.Option(help="Journal bytes that also trigger a snapshot (or half the store, if that is more).")
    ] = default("compaction_bytes"),
    disk_reserve_bytes: Annotated[
        int,
        typer.Option(
            help="Disk kept reserved ahead of the journal and the store; failing to reserve it raises the disk alarm.",
            envvar="MCPDB_DISK_RESERVE_BYTES",
        ),
    ] = default("disk_reserve_bytes"),
    change_history: Annotated[
        int, typer.Option(help="Changes kept for watches to resume from (oldest trimmed first).")
    ] = default("change_history"),
    vector_cache_mb: Annotated[
        int,
        typer.Option(
            help="Memory (MiB) for whole-namespace searches' vectors kept as matrices; 0 scans them every time."
        ),
    ] = default("vector_cache_mb"),
    advertise_url: Annotated[str | None, typer.Option(help="HTTP URL other nodes and clients use.")] = default(
        "advertise_url"
    ),
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="A host name requests may address this node by besides its own (a reverse proxy's; repeat)."),
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="An origin (scheme://host[:port]) besides its own whose web pages may call this node (repeat)."
        ),
    ] = None,
    mcp_max_sessions: Annotated[int, typer.Option(help="MCP sessions this node keeps open at most.")] = default(
        "mcp_max_sessions"
    ),
    mcp_sessions_per_token: Annotated[
        int, typer.Option(help="MCP sessions one token may keep open on this node (then 429).")
    ] = default("mcp_sessions_per_token"),
    mcp_idle_timeout: Annotated[
        float, typer.Option(help="Seconds an MCP session with no request and no open stream is kept.")
    ] = default("mcp_idle_timeout"),
    unsafe_stale_reads: Annotated[
        bool, typer.Option(help="BREAKS LINEARIZABILITY: serve reads without a barrier (for testing the checker).")
    ] = default("unsafe_stale_reads"),
    inference: Annotated[
        bool, typer.Option(help="Run a llama.cpp worker on this node (--no-inference: contexts only).")
    ] = default("inference"),
    model: Annotated[
        Path | None, typer.Option(help="GGUF model file (default: the bundled Gemma 3 270M Q4_K_M).")
    ] = default("model_path"),
    embedding: Annotated[
        bool,
        typer.Option(help="Compute the embeddings search ranks by, as leader (--no-embedding: lexical search only)."),
    ] = default("embedding"),
    embedding_model: Annotated[
        Path | None,
        typer.Option(help="GGUF model for embeddings (default: all-MiniLM-L6-v2, converted from its package)."),
    ] = default("embedding_model_path"),
    n_ctx: Annotated[int, typer.Option(help="Model context window in tokens.")] = default("n_ctx"),
    memory_budget: Annotated[
        int,
        typer.Option(help="Tokens of a chat's prompt for the memories most relevant to its new message (0: none)."),
    ] = default("memory_budget"),
    threads: Annotated[int, typer.Option(help="llama.cpp threads per generation.")] = default("threads"),
    slots: Annotated[
        int, typer.Option(help="Concurrent generations, each keeping its own KV cache (a session prefix per slot).")
    ] = default("slots"),
    weight: Annotated[
        float | None, typer.Option(help="Scheduling weight (default: tokens/s measured when the model loads).")
    ] = default("weight"),
    domain: Annotated[list[str] | None, typer.Option(help="Domain this node specialises in (repeat).")] = None,
    policy: Annotated[
        str,
        typer.Option(
            help="Scheduling policy when this node leads: affinity, weighted, least_connections, round_robin."
        ),
    ] = default("policy"),
    shed_threshold: Annotated[
        float,
        typer.Option(
            help="Affinity gives way when the session's node has this many more requests per slot "
            "than the least-loaded node."
        ),
    ] = default("shed_threshold"),
    autoscale: Annotated[
        str | None,
        typer.Option(
            help="MIN:MAX inference workers; when this node leads it decides how many there should be "
            "(a provisioner acts on GET /v1/autoscale)."
        ),
    ] = default("autoscale"),
    autoscale_target: Annotated[
        float, typer.Option(help="Requests in flight or queued per slot the autoscaler aims for.")
    ] = default("autoscale_target"),
    autoscale_cooldown: Annotated[float, typer.Option(help="Seconds after a change before the next one.")] = default(
        "autoscale_cooldown"
    ),
) -> None:
    """Start a node in the foreground; SIGTERM or Ctrl-C shuts it down gracefully."""
    try:
        from mcpdb.node.server import serve
        from mcpdb.raft.pysyncobj_bridge import check_pysyncobj_version
        from mcpdb.store.snapshot import check_lmdb_version
    except ModuleNotFoundError as error:
        if (error.name or "").startswith("mcpdb"):
            raise
        raise ConfigError(
            f"a node needs its dependencies: pip install 'mcpdb[node]' (no module {error.name!r})"
        ) from None

    if durability not in ("durable", "fast"):
        raise ConfigError(f"--durability must be 'durable' or 'fast', got {durability!r}")
    if replica and raft_addr:
        raise ConfigError("a --replica has no --raft-addr (it does not vote)")
    if not replica and not raft_addr:
        raise ConfigError("--raft-addr is required (or use --replica)")
    try:
        check_pysyncobj_version()
        check_lmdb_version()
    except RuntimeError as error:
        raise ConfigError(str(error)) from None
    config = NodeConfig(
        node_id=node_id,
        data_dir=str(data_dir),
        http_addr=http_addr,
        raft_addr=None if replica else raft_addr,
        peers=list(peer or []),
        token=read_secret(str(token_file) if token_file else None, "MCPDB_TOKEN"),
        cluster_secret=read_secret(str(cluster_secret_file) if cluster_secret_file else None, "MCPDB_CLUSTER_SECRET"),
        durable=durability == "durable",
        request_timeout=request_timeout,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        compaction_min_entries=compaction_entries,
        compaction_bytes=compaction_bytes,
        disk_reserve_bytes=disk_reserve_bytes,
        change_history=change_history,
        vector_cache_mb=vector_cache_mb,
        advertise_url=advertise_url,
        allowed_hosts=list(allowed_host or []),
        allowed_origins=list(allowed_origin or []),
        mcp_max_sessions=mcp_max_sessions,
        mcp_sessions_per_token=mcp_sessions_per_token,
        mcp_idle_timeout=mcp_idle_timeout,
        unsafe_stale_reads=unsafe_stale_reads,
        inference=inference,
        model_path=str(model) if model else None,
        embedding=embedding,
        embedding_model_path=str(embedding_model) if embedding_model else None,
        n_ctx=n_ctx,
        memory_budget=memory_budget,
        threads=threads,
        slots=slots,
        weight=weight,
        domains=list(domain or []),
        policy=policy,
        shed_threshold=shed_threshold,
        autoscale=autoscale,
        autoscale_target=autoscale_target,
        autoscale_cooldown=autoscale_cooldown,
    )
    config.validate()
    serve(config)


def main() -> None:
    """``python -m mcpdb.node``: a configuration mistake is one line on stderr and exit status 2."""
    try:
        app()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
