"""``python -m nodes start ...``: the same as ``mcpdb node start``, without loading the rest of the CLI."""

from cli.errors import fail
from cli.node import app
from nodes.config import ConfigError

try:
    app()
except ConfigError as error:
    fail(str(error), 2)
