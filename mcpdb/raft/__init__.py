"""Consensus: pysyncobj bridged into asyncio (``replication``), the log guard, ReadIndex and read barriers.

Only ``pysyncobj_bridge`` imports pysyncobj: the version pin, the SyncObj and transport subclasses,
the durable journal and every use of pysyncobj's internals live there, behind typed methods.

May import: ``mcpdb.store`` (the state machine it applies to), ``mcpdb.fsutil``; nothing of inference,
node or client.
"""
