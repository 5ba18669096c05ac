"""The ``mcpdb`` command line: thin commands over ``mcpdb.client`` and ``mcpdb.ops``.

``mcpdb node start`` is the one command that runs server code; it imports the node lazily, so the
client commands work from ``pip install mcpdb`` without the node's dependencies.
"""
