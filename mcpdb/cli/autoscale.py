"""``mcpdb autoscale``: act on the leader's autoscaling decisions by scaling a Kubernetes Deployment.

For local clusters, ``mcpdb up --autoscale MIN:MAX`` runs the same controller
with worker processes on this machine.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from mcpdb.cli.common import TokenOption, UrlOption, client, console
from mcpdb.ops.provisioning import KubernetesProvisioner, ScaleController


def autoscale(
    deployment: Annotated[str, typer.Option(help="The workers' Deployment.")] = "mcpdb-worker",
    namespace: Annotated[str | None, typer.Option(help="Its namespace (default: this pod's).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between looks at the decision.")] = 2.0,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Keep a Kubernetes Deployment of workers at the count the leader's autoscaler decides (runs in the
    cluster with the pod's service account; see deploy/README.md)."""
    provisioner = KubernetesProvisioner(deployment, namespace)
    with client(url, token, deadline=10.0) as http:
        controller = ScaleController(http, provisioner)
        while True:
            change = controller.step()
            if change:
                console.print(f"{time.strftime('%H:%M:%S')} {change}")
            time.sleep(interval)
