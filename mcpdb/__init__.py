"""mcpdb: a Raft-replicated context database for LLM applications.

One installed package, a subpackage per concern (docs/ARCHITECTURE.md, "The house"):
``store`` (the state machine), ``raft`` (consensus), ``inference`` (context to prompt to tokens),
``node`` (the process that serves them), ``client`` (the SDK), ``ops`` (local clusters, provisioners),
``cli`` (the command). ``model``, ``auth``, ``errors``, ``service`` and ``fsutil`` are the shared
contracts and the context operations every surface calls.
"""

__version__ = "0.1.0"
