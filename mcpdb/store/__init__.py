"""The replicated state machine of one node: LMDB, the log entries it applies, its snapshots and its
change history.

Everything here is deterministic in the log: the same entries give the same bytes on every replica.
May import: ``mcpdb.model``, ``mcpdb.fsutil``; nothing of raft, inference, node or client.
"""
