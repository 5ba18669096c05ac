"""``python -m mcpdb.node start ...``: the same as ``mcpdb node start``, without loading the rest of the CLI."""

from mcpdb.cli.errors import fail
from mcpdb.cli.node import app
from mcpdb.node.config import ConfigError

try:
    app()
except ConfigError as error:
    fail(str(error), 2)
