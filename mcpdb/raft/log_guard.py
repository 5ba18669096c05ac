"""Raft's AppendEntries receiver rule, enforced in front of pysyncobj 0.3.17.

pysyncobj deletes every follower entry after ``prevLogIdx`` whenever the
follower holds more entries than that, even when they match the leader's.
Raft (§5.3, receiver step 3) deletes only on a conflict: the same index with
a different term. Under pipelining a leader re-sends older entries (it moves
a follower's next index back on a stale reply), so the follower drops and
re-appends entries it had acknowledged and applied. If the leader dies inside
that window, a majority may no longer hold an acknowledged write.

``reconcile`` rewrites each incoming AppendEntries so pysyncobj's handler
only ever truncates at a real conflict:

- conflict at index i: hand pysyncobj the message starting at i (prev = i-1),
  so it truncates from i - exactly Raft's rule;
- entries that overlap the follower's log all match and new ones follow:
  prev becomes the follower's last entry and only the new entries remain;
- everything matches and the follower's entries past the message all carry
  the leader's current term: those came from this leader, and by the Log
  Matching property the whole log is a prefix of the leader's, so the message
  becomes a heartbeat at the follower's last index (pysyncobj acknowledges
  that index, which is true);
- everything matches but older-term entries follow that the leader may not
  have: nothing may be deleted (they might be committed) and nothing past the
  message may be acknowledged. The message loses its log part (pysyncobj then
  only refreshes leader, term and election timer), its commit index is capped
  at the verified index, and the caller acknowledges the verified index.

Messages pysyncobj rejects anyway (stale term, missing or mismatched prev
entry) and chunked transmissions pass unchanged: they never truncate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOG_KEYS = ("prevLogIdx", "prevLogTerm", "entries")


@dataclass(frozen=True)
class Reconciled:
    """The message to give pysyncobj, an index to acknowledge ourselves (or None), and where to point
    the leader's next index for this node instead of pysyncobj's answer (or None)."""

    message: dict[str, Any]
    ack_through: int | None = None
    step_back_to: int | None = None


def reconcile(
    message: dict[str, Any], current_term: int, first_index: int, last_index: int, term_at: Callable[[int], int]
) -> Reconciled:
    """Rewrite one AppendEntries so that matching entries are never truncated.

    ``first_index``/``last_index`` bound the follower's log; ``term_at(i)``
    is the term of its entry ``i`` for ``first_index <= i <= last_index``.
    """
    if (
        message.get("type") != "append_entries"
        or "prevLogIdx" not in message
        or "transmission" in message
        or message["term"] < current_term
    ):
        return Reconciled(message)
    prev_index, prev_term = message["prevLogIdx"], message["prevLogTerm"]
    if not first_index <= prev_index <= last_index or term_at(prev_index) != prev_term:
        return Reconciled(message)

    entries = message.get("entries", [])
    verified_index, verified_term = prev_index, prev_term
    for position, (_, index, term) in enumerate(entries):
        if index > last_index:
            if position == 0:
                return Reconciled(message)
            return Reconciled(
                {**message, "prevLogIdx": verified_index, "prevLogTerm": verified_term, "entries": entries[position:]}
            )
        if term_at(index) != term:
            return Reconciled(
                {**message, "prevLogIdx": verified_index, "prevLogTerm": verified_term, "entries": entries[position:]}
            )
        verified_index, verified_term = index, term

    if verified_index == last_index or term_at(verified_index + 1) == message["term"]:
        return Reconciled({**message, "prevLogIdx": last_index, "prevLogTerm": term_at(last_index), "entries": []})
    stripped = {key: value for key, value in message.items() if key not in LOG_KEYS}
    stripped["commit_index"] = min(message["commit_index"], verified_index)
    return Reconciled(stripped, ack_through=verified_index)


def past_a_divergent_tail(
    message: dict[str, Any], current_term: int, first_index: int, last_index: int, last_term: int, commit_index: int
) -> Reconciled | None:
    """An AppendEntries whose previous entry this follower lacks, while its last entry is not of the
    sender's term: the message loses its log part and its commit index is capped at this node's, and
    the answer points the leader's next index at this node's commit index + 1. None for any other
    message.

    pysyncobj answers "my last + 1" for such a message. But the entries past the commit index may be
    a deposed leader's, which this leader does not hold, and backing up past them takes one probe per
    entry (each mismatch answers "prevLogIdx"). The leader applies every answer as it comes, and
    while a probe's answer is in flight it sends more (the rest of a long tail, the next tick's
    writes, a heartbeat), each past this log and each answered "my last + 1", which lands after the
    probe's answer and undoes it: a fault run left a deposed leader two minutes behind, hearing every
    heartbeat and taking nothing (session 25, ``tests/test_raft_divergent_tail.py``). The committed
    entries are the leader's, so every such answer now points below the divergence, and whichever
    lands last is right. A last entry of the sender's term came from it: the log is a prefix of the
    leader's, and pysyncobj's answer stands."""
    if (
        message.get("type") != "append_entries"
        or "prevLogIdx" not in message
        or "transmission" in message
        or message["term"] < current_term
        or first_index <= message["prevLogIdx"] <= last_index
        or last_term == message["term"]
    ):
        return None
    stripped = {key: value for key, value in message.items() if key not in LOG_KEYS}
    stripped["commit_index"] = min(message["commit_index"], commit_index)
    return Reconciled(stripped, step_back_to=commit_index + 1)
