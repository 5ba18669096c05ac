"""The route table (mcpdb/node/http/routes.py) is the node's routes, no more and no less, and what the
gate, the metrics and the overview derive from it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mcpdb.node.http.routes import (
    OTHER,
    PUBLIC_PATHS,
    ROUTES,
    UNCOUNTED_LABELS,
    Access,
    label_of,
    route_for,
)
from mcpdb.node.internal.messages import INTERNAL_PATHS
from mcpdb.ops.localcluster import free_port

# Builds a real node's app (without serving it) in a child process, whose Raft thread dies with it,
# and prints the paths the app declares.
_DECLARED = textwrap.dedent("""
    import json, os, sys
    from fastapi import FastAPI
    from mcpdb.node.config import NodeConfig
    from mcpdb.node.http.app import create_app
    from mcpdb.node.runtime import NodeRuntime
    config = NodeConfig(node_id="n1", data_dir=sys.argv[1], http_addr="127.0.0.1:" + sys.argv[2],
                        raft_addr="127.0.0.1:" + sys.argv[3], inference=False)
    app = create_app(NodeRuntime(config))
    while not isinstance(app, FastAPI):
        app = app.app
    paths = sorted({r.path for r in app.routes if hasattr(r, "methods")})
    print(json.dumps(paths), flush=True)
    os._exit(0)
""")


def test_the_table_is_exactly_the_routes_the_app_declares(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _DECLARED, str(tmp_path), str(free_port()), str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    declared = set(json.loads(done.stdout.strip().splitlines()[-1]))
    declared -= {"/docs/oauth2-redirect"}  # FastAPI's own, unused: the docs are served offline
    assert declared == {route.template for route in ROUTES}


@pytest.mark.parametrize(
    "path, label",
    [
        ("/v1/namespaces/acme/contexts/x1", "/v1/namespaces/{ns}/contexts/{id}"),
        ("/v1/namespaces/acme/contexts", "/v1/namespaces/{ns}/contexts"),
        ("/v1/namespaces/acme/sessions/s1/turns", "/v1/namespaces/{ns}/sessions/{id}/turns"),
        ("/v1/namespaces/acme/watch", "/v1/namespaces/{ns}/watch"),
        ("/mcp", "/mcp"),
        ("/v1/tokens/abc", "/v1/tokens/{id}"),
        ("/v1/cluster/members/127.0.0.1:7800", "/v1/cluster/members/{raft_addr}"),
        ("/v1/autoscale", "/v1/autoscale"),
        ("/v1/node/drain", "/v1/node/drain"),  # once counted as "other"
        ("/v1/namespaces/acme/contexts/x/extra", OTHER),
        ("/nowhere", OTHER),
    ],
)
def test_metric_labels_are_route_templates(path: str, label: str) -> None:
    assert label_of(path) == label


def test_access_and_load_follow_the_table() -> None:
    assert PUBLIC_PATHS == {"/healthz", "/readyz", "/ui"}
    for path in (*INTERNAL_PATHS, "/v1/node/drain", "/v1/cluster/members"):
        route = route_for(path)
        assert route is not None and route.access is Access.cluster_admin
    assert {"/v1/overview", "/metrics", "/v1/autoscale", *INTERNAL_PATHS} <= UNCOUNTED_LABELS
    assert "/v1/namespaces/{ns}/contexts/{id}" not in UNCOUNTED_LABELS
