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


class StepBack:
    """The lowest index this follower answered "mismatch" for in the current term, so that its answer to
    an AppendEntries past its log never points the leader above it.

    pysyncobj answers a message whose previous entry the follower lacks with "my last + 1", and one
    whose previous entry's term differs with "prevLogIdx"; the leader applies every reset as it comes.
    Backing up past a deposed leader's own uncommitted tail takes one such probe per entry, and every
    other AppendEntries in flight meanwhile (the rest of a long tail, the next tick's writes, a
    heartbeat) is past the log and was answered "last + 1", which landed after the probe's answer and
    undid it: a fault run left a deposed leader two minutes behind, hearing every heartbeat and taking
    nothing (session 25, ``tests/test_raft_divergent_tail.py``). Answers go back in the order messages
    came, so an answer given after a mismatch that points no higher than it leaves the probe's step
    standing: a message past the log, or one mismatching above the lowest (a tail longer than the new
    leader's log puts every pipelined message inside it), is answered with the lowest. Forgotten once
    an accepted message reaches that index (the leader's entries are there now), once it is below the
    log's first entry or at most the commit index (a snapshot or a commit covers it: the leader's entry
    is there now), or in a new term; without a
    mismatch the answer is pysyncobj's, unchanged. Found by a fault run and two reviews
    (``tests/test_raft_step_back.py``)."""

    def __init__(self) -> None:
        self._term = -1
        self._lowest: int | None = None

    def answer(
        self,
        message: dict[str, Any],
        current_term: int,
        first_index: int,
        last_index: int,
        term_at: Callable[[int], int],
        commit_index: int,
    ) -> Reconciled | None:
        """For an AppendEntries past the log, or mismatching above it, while a lower mismatch stands:
        the message without its log part and the answer to send instead of pysyncobj's. None
        otherwise, noting a mismatch on the way."""
        if (
            message.get("type") != "append_entries"
            or "prevLogIdx" not in message
            or "transmission" in message
            or message["term"] < current_term
        ):
            return None
        if message["term"] != self._term:
            self._term, self._lowest = message["term"], None
        if self._lowest is not None and (self._lowest < first_index or self._lowest <= commit_index):
            self._lowest = None  # under this node's snapshot, or committed since: the leader's entry now
        prev_index = message["prevLogIdx"]
        if first_index <= prev_index <= last_index:
            if term_at(prev_index) != message["prevLogTerm"]:
                if self._lowest is not None and self._lowest < prev_index:
                    return _answered_instead(message, commit_index, self._lowest)
                self._lowest = prev_index
            return None
        if self._lowest is None or self._lowest > last_index:
            return None
        return _answered_instead(message, commit_index, self._lowest)

    def accepted(self, through: int) -> None:
        """The leader's entries are in this log through ``through``: a mismatch at or below it is gone."""
        if self._lowest is not None and through >= self._lowest:
            self._lowest = None


def _answered_instead(message: dict[str, Any], commit_index: int, step_back_to: int) -> Reconciled:
    """``message`` without its log part, committing nothing this node has not verified, and an answer
    pointing the leader's next index at ``step_back_to``."""
    stripped = {key: value for key, value in message.items() if key not in LOG_KEYS}
    stripped["commit_index"] = min(message["commit_index"], commit_index)
    return Reconciled(stripped, step_back_to=step_back_to)
