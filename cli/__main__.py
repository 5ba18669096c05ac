"""``python -m cli``: the same as the ``mcpdb`` console script."""

from cli.main import run

run()
