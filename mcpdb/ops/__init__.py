"""Operator tooling: a local cluster of real node processes, and provisioners that act on the
autoscaler's decisions (local processes, a Kubernetes Deployment).

Talks to nodes over HTTP through ``mcpdb.client`` and starts them as processes
(``python -m mcpdb.node``); imports nothing of the node's code.
"""
