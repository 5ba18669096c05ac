"""``mcpdb up``: a local cluster of real node processes, served until Ctrl-C."""

from __future__ import annotations

import shlex
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mcpdb.cli.common import console
from mcpdb.cli.demo import run_demo
from mcpdb.cli.errors import CliError
from mcpdb.client import Client, McpdbError
from mcpdb.inference.autoscale_policy import ScalePolicy
from mcpdb.node.config import read_secret
from mcpdb.ops.localcluster import ClusterLayout, LocalCluster
from mcpdb.ops.provisioning import LocalProvisioner, ScaleController, threads_per_worker


def _check_free(address: str) -> None:
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind: connections of a previous run in TIME_WAIT are no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            raise CliError(
                f"{address} is already in use; choose another --base-port or stop what is listening there"
            ) from None


def up(
    nodes: Annotated[int, typer.Option(help="Voters to start (3 or 5 tolerate 1 or 2 failures).")] = 3,
    data_dir: Annotated[Path, typer.Option(help="Where the nodes keep their data.")] = Path("mcpdb-data"),
    base_port: Annotated[int, typer.Option(help="HTTP on base+i, Raft on base+100+i.")] = 7700,
    demo: Annotated[
        bool, typer.Option(help="Once up, run a short conversation showing which node served each turn.")
    ] = False,
    model: Annotated[
        Path | None, typer.Option(help="GGUF model for every node (default: the bundled Gemma 3 270M).")
    ] = None,
    autoscale: Annotated[
        str | None,
        typer.Option(
            help="MIN:MAX: the voters keep the store only, and inference runs on 1..N worker replicas "
            "started and stopped as the leader's autoscaler decides."
        ),
    ] = None,
    autoscale_cooldown: Annotated[float, typer.Option(help="Seconds between scaling changes.")] = 15.0,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the bootstrap token every node requires (else MCPDB_TOKEN).")
    ] = None,
) -> None:
    """Start a local cluster, load the model on every node, print each node's URL and the leader,
    and serve until Ctrl-C.

    Run it again on the same --data-dir and the data is back.
    """
    if model is not None and not model.is_file():
        raise CliError(f"--model {model}: no such file")
    if nodes < 1:
        raise CliError("--nodes must be at least 1")
    token = read_secret(str(token_file) if token_file else None, "MCPDB_TOKEN")
    layout = ClusterLayout.load(data_dir)
    if layout is None:
        if not 1024 <= base_port <= 65535 - 200:
            raise CliError("--base-port must be between 1024 and 65335")
        layout = ClusterLayout.fresh(nodes, base_port=base_port)
    elif len(layout.nodes) != nodes:
        raise CliError(
            f"{data_dir} holds a {len(layout.nodes)}-node cluster; run with --nodes "
            f"{len(layout.nodes)} or use another --data-dir"
        )
    for spec in layout.nodes:
        _check_free(spec.http_addr)
        if spec.raft_addr:
            _check_free(spec.raft_addr)
    # Flags are this run's choice, not what an earlier run on the same directory saved.
    model_args = ["--model", str(model.resolve())] if model is not None else []
    layout.extra_args = list(model_args)
    policy = _autoscale_policy(autoscale, autoscale_cooldown, demo)
    if policy is not None:
        layout.extra_args += [
            "--no-inference",
            "--autoscale",
            f"{policy.min_workers}:{policy.max_workers}",
            "--autoscale-cooldown",
            str(autoscale_cooldown),
        ]
    # The cluster's own checks, the demo and the autoscaler send the token the nodes get.
    cluster = LocalCluster(layout, data_dir, token=token)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start_all()
        with console.status(f"starting {nodes} nodes in {data_dir} ..."):
            try:
                leader = cluster.wait_ready(timeout=60)
            except (TimeoutError, RuntimeError) as error:
                raise CliError(f"cluster did not come up: {error}") from None
        if policy is not None:
            _print_nodes(cluster, leader, {}, token_file)
            autoscale_until(cluster, policy.max_workers, model_args, stop)
        else:
            _serve_until(cluster, leader, token_file, demo, stop)
    finally:
        with console.status("stopping nodes ..."):
            cluster.stop_all(graceful=True)
    console.print(f"stopped; data kept in {data_dir}")


def _serve_until(
    cluster: LocalCluster, leader: str, token_file: Path | None, demo: bool, stop: threading.Event
) -> None:
    """Load the model on every node, print them (and run the demo), then report nodes that exit
    until ``stop``."""
    with console.status("loading the model on every node ..."):
        try:
            inference = cluster.wait_models(timeout=300)
        except (TimeoutError, RuntimeError) as error:
            raise CliError(str(error)) from None
    _print_nodes(cluster, leader, inference, token_file)
    if demo:
        try:
            run_demo({spec.node_id: spec.url for spec in cluster.layout.nodes}, cluster.token)
        except McpdbError as error:
            raise CliError(f"demo failed: {error.message}") from None
    console.print("serving; press Ctrl-C to stop")
    reported: set[str] = set()
    while not stop.wait(1.0):
        for spec in cluster.layout.nodes:
            if not cluster.running(spec.node_id) and spec.node_id not in reported:
                reported.add(spec.node_id)
                console.print(f"[red]{spec.node_id} exited[/]; see {cluster.data_dir / spec.node_id / 'node.log'}")


def _autoscale_policy(autoscale: str | None, cooldown: float, demo: bool) -> ScalePolicy | None:
    if autoscale is None:
        return None
    if demo:
        raise CliError("--demo and --autoscale do not go together: run the demo on a fixed cluster")
    try:
        return ScalePolicy.from_flags(autoscale, cooldown_s=cooldown)
    except ValueError as error:
        raise CliError(str(error)) from None


def autoscale_until(cluster: LocalCluster, max_workers: int, model_args: list[str], stop: threading.Event) -> None:
    """Run worker replicas as the leader's autoscaler decides, printing each change, until ``stop``."""
    threads = threads_per_worker(max_workers)
    provisioner = LocalProvisioner(cluster, [*model_args, "--inference", "--threads", str(threads)])
    console.print(
        f"autoscaling inference workers ({threads} thread(s) each); watch it with "
        f"`mcpdb top --url {cluster.layout.nodes[0].url}`; press Ctrl-C to stop"
    )
    with Client([spec.url for spec in cluster.layout.nodes if spec.voter], token=cluster.token, deadline=5) as client:
        controller = ScaleController(client, provisioner)
        try:
            while not stop.wait(1.0):
                change = controller.step()
                if change:
                    console.print(
                        f"{time.strftime('%H:%M:%S')} {change}; workers: {', '.join(provisioner.workers()) or 'none'}"
                    )
        finally:
            provisioner.scale_to(0)


def _print_nodes(
    cluster: LocalCluster, leader: str, inference: dict[str, dict[str, Any]], token_file: Path | None
) -> None:
    """The table fits the terminal, so its cells may be cut; the URLs, what a newcomer copies, go
    below it as plain lines that are never wrapped or cut, whatever the width (or no terminal)."""
    table = Table("node", "role", "Raft", "model", "weight")
    for spec in cluster.layout.nodes:
        role = "[bold green]leader[/]" if spec.node_id == leader else "follower"
        info = inference.get(spec.node_id, {})
        table.add_row(spec.node_id, role, spec.raft_addr or "-", info.get("model", "-"), str(info.get("weight", "-")))
    console.print(table)
    _plain("URLs (pass any with --url):")
    for spec in cluster.layout.nodes:
        _plain(f"  {spec.node_id}  {spec.url}")
    if token_file is not None:
        # The secret itself is never printed: this output ends up in scrollback and logs.
        path = shlex.quote(str(token_file.resolve()))
        _plain(
            f"every node requires the token in {path}; for clients: "
            f'export MCPDB_TOKEN="$(head -n1 {path})" (or --token)'
        )
    elif cluster.token:
        _plain("every node requires the token in MCPDB_TOKEN; clients read it from there too (or --token)")
    _plain(f"leader: {leader} at {cluster.spec(leader).url}")


def _plain(line: str) -> None:
    console.print(line, soft_wrap=True, markup=False, highlight=False)
