"""Chat sessions after a run: one reply per message, exactly once, generated from fresh context.

The user messages of the ``chat`` workload are unique values, so lost,
duplicated, reordered and stale messages are the list-append checker's job.
This checker reads the final sessions (turns with their metadata) and the
history, and reports:

- ``duplicate_turn``: an idempotency key on more than one user turn (a
  retried request appended twice);
- ``unpaired_turn``: a user turn not immediately followed by the assistant
  turn made for it (same idempotency key), or an assistant turn without its
  user turn: the append of message and reply was not atomic;
- ``context_older_than_read_index``: a reply whose recorded context index is
  below its read index: the worker read its replica before applying the
  read index it was given;
- ``stale_context``: a reply generated from a session that lacked a message
  whose chat was acknowledged before this chat began. The worker records
  how many turns it read (``context_turns``); every message acknowledged
  earlier must sit within them. This is what linearizable context reads
  promise to a chat.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from jepsen_like.history import Op, by_key, pairs

KEY_PREFIX = "jepsen-"


def _anomaly(kind: str, key: str, **details: Any) -> dict[str, Any]:
    return {"kind": kind, "key": key, "details": details}


def _check_structure(
    key: str, turns: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, int]]:
    """Anomalies of one session's turns; where each message is and how many turns its reply saw."""
    anomalies = []
    position: dict[str, int] = {}
    context_turns: dict[str, int] = {}
    users = Counter(t["metadata"].get("idempotency_key") for t in turns if t["role"] == "user")
    for idem, count in users.items():
        if count > 1:
            anomalies.append(_anomaly("duplicate_turn", key, idempotency_key=idem, count=count))
    for index, turn in enumerate(turns):
        meta = turn.get("metadata", {})
        idem = meta.get("idempotency_key")
        if turn["role"] == "user":
            reply = turns[index + 1] if index + 1 < len(turns) else None
            if reply is None or reply["role"] != "assistant" or reply["metadata"].get("idempotency_key") != idem:
                anomalies.append(_anomaly("unpaired_turn", key, position=index, idempotency_key=idem))
            position.setdefault(idem, index)
            continue
        previous = turns[index - 1] if index > 0 else None
        if previous is None or previous["metadata"].get("idempotency_key") != idem:
            anomalies.append(_anomaly("unpaired_turn", key, position=index, idempotency_key=idem))
        if meta.get("context_index") is None or meta["context_index"] < meta["read_index"]:
            anomalies.append(
                _anomaly(
                    "context_older_than_read_index",
                    key,
                    position=index,
                    read_index=meta.get("read_index"),
                    context_index=meta.get("context_index"),
                )
            )
        context_turns[idem] = meta.get("context_turns", 0)
    return anomalies, position, context_turns


def check(ops: Iterable[Op], final_turns: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``final_turns``: each session's turns as one node holds them after healing."""
    anomalies: list[dict[str, Any]] = []
    for key, key_ops in sorted(by_key(ops).items()):
        structure, position, context_turns = _check_structure(key, final_turns.get(key, []))
        anomalies += structure
        chats = [(invoke, done) for invoke, done in pairs(key_ops) if invoke.f == "chat"]
        acknowledged = sorted(
            (done.index, f"{KEY_PREFIX}{invoke.value}") for invoke, done in chats if done.type == "ok"
        )
        for invoke, done in chats:
            idem = f"{KEY_PREFIX}{invoke.value}"
            if done.type != "ok" or idem not in context_turns:
                continue
            seen = context_turns[idem]
            for acked_at, earlier in acknowledged:
                if acked_at > invoke.index:
                    break
                if earlier in position and position[earlier] + 1 >= seen:
                    anomalies.append(
                        _anomaly(
                            "stale_context",
                            key,
                            chat=idem,
                            context_turns=seen,
                            missing=earlier,
                            missing_position=position[earlier],
                        )
                    )
    return {"valid": not anomalies, "anomalies": anomalies, "counts": dict(Counter(a["kind"] for a in anomalies))}
