"""``python -m mcpdb.cli``: the same as the ``mcpdb`` console script."""

from mcpdb.cli.main import run

run()
