"""Consensus: pysyncobj bridged into asyncio, its transport and journal, the log guard, ReadIndex and
read barriers.

May import: ``mcpdb.store`` (the state machine it applies to), ``mcpdb.fsutil``; nothing of inference,
node or client.
"""
