"""``python -m mcpdb.node start ...``: the same as ``mcpdb node start``, without loading the CLI."""

from mcpdb.node.command import main

main()
