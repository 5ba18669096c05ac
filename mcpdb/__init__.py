"""mcpdb: a Raft-replicated context database for LLM applications."""

__version__ = "0.1.0"
