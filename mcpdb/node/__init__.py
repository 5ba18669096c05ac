"""The mcpdb node process: configuration, runtime wiring, the HTTP and MCP surfaces, node-to-node
inference, metrics and duties. ``python -m mcpdb.node start ...`` runs one.

The top of the house: it may import every library package (store, raft, inference, service, auth,
model), and none of them, nor the client or the CLI, imports it.
"""
