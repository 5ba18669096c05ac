"""Turns that left a chat's window, ranked by the new message: what a long conversation can still recall.

When a session outgrows the model's window, assembly drops its oldest turns. A fact the user gave
early ("my flight is LH 454 on the 12th") would then be gone from the prompt for good unless it was
also stored as a memory. Ranking the dropped turns by the new message with BM25, as the store's
lexical search ranks memories, lets the best of them come back as recall lines, within the same
memory budget, after the memories.

Computed where the prompt is assembled, from the session's turns the request already read: the
turns are the session record's, identical on every replica at the read index, and the ranking is
integer term statistics and single-threaded float arithmetic over them, so it is the same on
every node. Lexical only: turns carry no vectors (embedding every turn of every session would put
the embedder's cost on each chat's write). Only turns sharing a term with the message are
candidates: a turn the message says nothing about is not worth the tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mcpdb.retrieval import lexical

# A conversation can hold many thousands of turns, each up to the API's size limit; ranking reads the
# newest dropped ones up to this many, and this much text, so a chat's cost does not grow with the
# session's whole history.
MAX_RANKED_TURNS = 2000
MAX_RANKED_CHARS = 1 << 20


class TurnIndex:
    """The terms of a session's turns, analysed once per request however many window sizes
    assembly tries."""

    def __init__(self, turns: Sequence[dict[str, Any]]) -> None:
        self._turns = turns
        self._terms: dict[int, Counter[str]] = {}

    def _counts(self, position: int) -> Counter[str]:
        counts = self._terms.get(position)
        if counts is None:
            counts = self._terms[position] = Counter(lexical.terms(self._turns[position]["content"]))
        return counts

    def ranked(self, dropped: int, message: str) -> list[int]:
        """Positions of the first ``dropped`` turns (those out of the window) that share a term with
        ``message``, best first by BM25 among them; the newer first on a tie."""
        query = lexical.query_terms(message)
        if not query:
            return []
        positions: list[int] = []
        chars = 0
        for position in range(dropped - 1, max(-1, dropped - 1 - MAX_RANKED_TURNS), -1):
            chars += len(self._turns[position]["content"])
            if chars > MAX_RANKED_CHARS:
                break
            positions.append(position)
        if not positions:
            return []
        counts = {position: self._counts(position) for position in positions}
        lengths = {position: sum(terms.values()) for position, terms in counts.items()}
        average = sum(lengths.values()) / len(positions)
        scores: dict[int, float] = {}
        for term in query:
            holding = [position for position in positions if counts[position][term]]
            weight = lexical.idf(len(positions), len(holding))
            for position in holding:
                score = lexical.term_score(weight, counts[position][term], lengths[position], average)
                scores[position] = scores.get(position, 0.0) + score
        return sorted(scores, key=lambda position: (-scores[position], -position))


def line(turn: dict[str, Any]) -> str:
    """A recalled turn as one recall line: who said it, then what, quoted and on one line (a turn's
    own newlines could otherwise forge recall lines of their own, "you said: ...")."""
    speaker = {"user": "the user said", "assistant": "you said"}.get(turn["role"], f"a {turn['role']} message said")
    said = json.dumps(" ".join(turn["content"].split()), ensure_ascii=False)
    return f"- earlier in this conversation, {speaker}: {said}"
