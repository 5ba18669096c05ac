"""Defaults of the store's tunables, in a module without LMDB: the node's config takes them as its
own defaults, and the CLI's ``--help`` shows them from a plain ``pip install mcpdb``."""

DEFAULT_CHANGE_HISTORY = 100_000  # changes kept for watches to resume from
