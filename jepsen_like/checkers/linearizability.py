"""Linearizability of a register history (read, write, compare-and-set), checked per key.

Registers are independent, so a history is linearizable iff each key's
sub-history is (P-compositionality); each key is searched on its own.

The search is Wing and Gong's, with Lowe's memoisation, as Porcupine does
it: the history is a doubly linked list of call and return events in real
time order. Walking it, a call whose operation the model accepts in the
current state is linearized (its call and return are lifted out of the list)
and the walk restarts from the head; reaching a return event means that
operation could not be placed, so the search backtracks. A set of
(linearized operations, state) pairs already explored prunes repeats.

Outcomes: ``fail`` operations did not happen and are dropped; reads that did
not complete say nothing and are dropped; ``info`` operations may have
happened at any point after their invocation, or never: they get a call
event and no return event, so the search may linearize them or leave them
out. The search succeeds once every ``ok`` operation is linearized. A time
budget turns a search that runs too long into "unknown", never a guess.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jepsen_like.history import Op, pairs

OK, VIOLATION, UNKNOWN = "ok", "violation", "unknown"


@dataclass(frozen=True)
class _Operation:
    id: int
    f: str
    value: Any  # write: the value; cas: [expected, new]
    output: Any  # read: the value read (None = absent)
    info: bool
    invocation: Op
    completion: Op


def _step(state: Any, op: _Operation) -> tuple[bool, Any]:
    """The register model: may ``op`` happen in ``state``, and what state follows?"""
    if op.f == "read":
        return state == op.output, state
    if op.f == "write":
        return True, op.value
    expected, new = op.value
    return (True, new) if state == expected else (False, state)


class _Event:
    __slots__ = ("op", "is_call", "match", "prev", "next")

    def __init__(self, op: _Operation | None, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Event | None = None  # a call's return event (None for info operations)
        self.prev: _Event | None = None
        self.next: _Event | None = None


def _unlink(event: _Event) -> None:
    assert event.prev is not None
    event.prev.next = event.next
    if event.next is not None:
        event.next.prev = event.prev


def _relink(event: _Event) -> None:
    assert event.prev is not None
    event.prev.next = event
    if event.next is not None:
        event.next.prev = event


def _operations(key_ops: Iterable[Op]) -> list[_Operation]:
    operations = []
    for invocation, completion in pairs(key_ops):
        if completion.type == "fail":
            continue
        if invocation.f == "read" and completion.type != "ok":
            continue
        operations.append(_Operation(len(operations), invocation.f, invocation.value,
                                     completion.value if invocation.f == "read" else None,
                                     completion.type == "info", invocation, completion))
    return operations


def check_key(key_ops: Iterable[Op], deadline: float, initial: Any = None) -> tuple[str, dict[str, Any] | None]:
    """Search one key's history; returns (verdict, details of the violation or None)."""
    operations = _operations(key_ops)
    timeline: list[tuple[int, _Event]] = []
    for op in operations:
        call = _Event(op, True)
        timeline.append((op.invocation.index, call))
        if not op.info:
            call.match = _Event(op, False)
            timeline.append((op.completion.index, call.match))
    timeline.sort(key=lambda item: item[0])
    head = _Event(None, True)
    previous = head
    for _, event in timeline:
        previous.next, event.prev = event, previous
        previous = event

    total = remaining = sum(1 for op in operations if not op.info)
    deepest, blocker = -1, None  # the furthest the search got, and what stopped it there
    state, linearized = initial, 0
    explored: set[tuple[int, Any]] = set()
    stack: list[tuple[_Event, Any]] = []
    event = head.next
    steps = 0
    while remaining:
        steps += 1
        if steps % 4096 == 0 and time.monotonic() > deadline:
            return UNKNOWN, None
        assert event is not None, "a return event always precedes the end of the list"
        if event.is_call:
            op = event.op
            assert op is not None
            accepted, next_state = _step(state, op)
            if accepted:
                marker = (linearized | 1 << op.id, _hashable(next_state))
                if marker not in explored:
                    explored.add(marker)
                    stack.append((event, state))
                    state, linearized = next_state, marker[0]
                    _unlink(event)
                    if event.match is not None:
                        _unlink(event.match)
                        remaining -= 1
                    event = head.next
                    continue
            event = event.next
        else:
            if total - remaining > deepest:
                deepest, blocker = total - remaining, event.op
            if not stack:
                return VIOLATION, {"linearized_before_stuck": deepest, **_describe(blocker, operations)}
            event, state = stack.pop()
            op = event.op
            assert op is not None
            linearized &= ~(1 << op.id)
            if event.match is not None:
                _relink(event.match)
                remaining += 1
            _relink(event)
            event = event.next
    return OK, None


def _hashable(state: Any) -> Any:
    return tuple(state) if isinstance(state, list) else state


def _describe(stuck: _Operation | None, operations: list[_Operation]) -> dict[str, Any]:
    """The operation that blocked the longest linearization found, and what ran concurrently with it."""
    assert stuck is not None
    start, end = stuck.invocation.index, stuck.completion.index

    def summary(op: _Operation) -> dict[str, Any]:
        return {"f": op.f, "value": op.value, "output": op.output, "process": op.invocation.process,
                "node": op.invocation.node, "outcome": op.completion.type,
                "invoked": round(op.invocation.time, 4), "completed": round(op.completion.time, 4)}

    overlapping = [summary(op) for op in operations
                   if op is not stuck and op.invocation.index < end and op.completion.index > start]
    return {"cannot_linearize": summary(stuck), "concurrent": overlapping[:20]}


def check(ops: Iterable[Op], time_budget: float = 60.0) -> dict[str, Any]:
    """Check every key of a register history within ``time_budget`` seconds in total."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    deadline = time.monotonic() + time_budget
    verdicts: dict[str, str] = {}
    anomalies = []
    for key in sorted(by_key):
        verdict, details = check_key(by_key[key], deadline)
        verdicts[key] = verdict
        if verdict == VIOLATION:
            anomalies.append({"key": key, "kind": "nonlinearizable", **(details or {})})
    if anomalies:
        valid: bool | str = False
    elif any(v == UNKNOWN for v in verdicts.values()):
        valid = "unknown"
    else:
        valid = True
    return {"valid": valid, "keys": verdicts, "anomalies": anomalies}
