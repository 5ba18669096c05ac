"""The ``mcpdb`` command line."""
