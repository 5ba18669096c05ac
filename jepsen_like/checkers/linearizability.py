"""Linearizability of a register history (read, write, compare-and-set), checked per key.

Registers are independent, so a history is linearizable iff each key's
sub-history is (P-compositionality): searching keys one by one turns one
exponential search over the whole history into many small ones.

The search is Wing and Gong's with Lowe's memoisation, the way Porcupine
does it. A key's ``ok`` operations become a doubly linked list of call and
return events in real-time order. Walking it, a call whose operation the
register model accepts in the current state is linearized: its call and
return are lifted out of the list, and the walk restarts from the head.
Reaching a return event means its operation should already have been
placed, so the search backtracks to the last choice and tries the next one.
A cache of configurations already explored (operations placed, state)
prunes every configuration reached again by another order: without it a few
dozen concurrent operations take forever.

What each outcome means to the search:

- ``ok``: happened between invocation and completion; it must be placed.
  A read returns the model's value (``None``: absent); a cas that returned
  ``ok`` found its expected value.
- ``fail``: certainly did not happen (mcpdb returns a CAS conflict as a
  ``fail``: the server did not apply it), so it is dropped. Reads that did
  not return ``ok`` change nothing and say nothing, so they are dropped too.
- ``info``: may have happened at any time after its invocation, or never: an
  infinite completion time, and the search succeeds once every ``ok``
  operation is placed, whether or not the ``info`` ones were.

Indeterminate operations are what makes such searches explode: each may be
in or out, anywhere, so k of them pending multiply the configurations by up
to 2^k, and a history with a violation (which must be searched to the end)
may not finish. They are therefore kept out of the list and tried only when
the walk is stuck at a return event, so configurations that need none of
them are explored first, and they are narrowed by three rules that keep
every valid history valid (each by an exchange argument on a valid
linearization):

1. an ``info`` operation is placed only if it changes the register: one
   that leaves the value as it is can be dropped from any linearization;
2. right after an ``info`` operation comes a read or a cas, never a write:
   a value overwritten before anything observed it can be dropped too;
3. ``info`` operations with the same function and argument are placed in
   invocation order: an earlier-invoked twin can stand in for a later one
   anywhere the later one could go.

Rule 3 makes the cache stronger (see ``_explored``): a configuration that
used a subset of the ``info`` operations of an explored one, with the same
``ok`` operations and state, subsumes it.

The time budget covers the whole check. A key whose search outlives it is
"unknown", never a guessed verdict; a key whose search is short still gets
its verdict, since the clock is only read every ``_CLOCK_EVERY`` steps.

After healing, ``check_final`` holds every node's final value of a register
to the writes (and cas operations, which write their new value): replicas
agreeing is not enough, since a write lost before it was replicated leaves
them agreeing on an older value. The register ends with the value of the
last write linearized, so a write that completed before some acknowledged
write began cannot have left the final value; any other (acknowledged,
indeterminate, or never completed) can. Comparing against the acknowledged
write that began last is enough: every write superseded by some
acknowledged write completed before that one began. Absent is possible only
if no write was acknowledged.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jepsen_like.history import NEVER_INDEX, Op, by_key, pairs

OK, VIOLATION, UNKNOWN = "ok", "violation", "unknown"
_CLOCK_EVERY = 256  # steps between clock reads: cheap enough, and a tiny budget still stops a long search
_TAIL = 5  # operations linearized just before the search got stuck, reported with the anomaly
_CONCURRENT = 20  # at most this many concurrent operations are reported with an anomaly


@dataclass(frozen=True, slots=True)
class _Operation:
    bit: int  # this operation's bit in the set of placed operations of its kind (ok or info)
    f: str
    argument: Any  # write: the value; cas: (expected, new); frozen so states hash
    output: Any  # ok read: the value read (None = absent)
    info: bool
    invocation: Op
    completion: Op


@dataclass
class _Twins:
    """Info operations with the same function and argument, in invocation order.

    By rule 3 they are placed in that order, so the ones placed are always the
    first ``placed``, and only the next one is ever a candidate.
    """

    ops: list[_Operation]
    leaves: Any  # the value any of them leaves in the register
    placed: int = 0


def _freeze(value: Any) -> Any:
    """JSON lists become tuples, so register states can be cache keys and compare to what a read returned."""
    return tuple(_freeze(item) for item in value) if isinstance(value, list) else value


def _step(state: Any, op: _Operation) -> tuple[bool, Any]:
    """The register model: may ``op`` happen in ``state``, and what state follows?"""
    if op.f == "read":
        return state == op.output, state
    if op.f == "write":
        return True, op.argument
    expected, new = op.argument
    return state == expected, new


def _placeable(state: Any, op: _Operation, after_info: bool) -> tuple[bool, Any]:
    """``_step``, narrowed by rules 1 and 2 for indeterminate operations (see the module docstring)."""
    if after_info and op.f == "write":
        return False, state
    accepted, after = _step(state, op)
    if op.info:
        accepted = accepted and after != state
    return accepted, after


def _operations(key_ops: Iterable[Op]) -> tuple[list[_Operation], list[_Twins]]:
    """The ``ok`` operations in invocation order, and the ``info`` ones that may matter, grouped into twins."""
    ok: list[_Operation] = []
    twins: dict[tuple[str, Any], _Twins] = {}
    info_count = 0
    for invocation, completion in pairs(key_ops):
        if completion.type == "fail" or (invocation.f == "read" and completion.type != "ok"):
            continue
        if invocation.f not in ("read", "write", "cas"):
            raise ValueError(f"op {invocation.index}: {invocation.f!r} is not a register operation")
        argument = _freeze(invocation.value)
        if completion.type == "ok":
            output = _freeze(completion.value) if invocation.f == "read" else None
            ok.append(_Operation(1 << len(ok), invocation.f, argument, output, False, invocation, completion))
            continue
        leaves = argument if invocation.f == "write" else argument[1]
        group = twins.setdefault((invocation.f, argument), _Twins([], leaves))
        group.ops.append(_Operation(1 << info_count, invocation.f, argument, None, True, invocation, completion))
        info_count += 1
    return ok, list(twins.values())


class _Event:
    """A call or return of an ``ok`` operation, in the linked list the search lifts operations out of."""

    __slots__ = ("is_call", "match", "next", "op", "prev")

    def __init__(self, op: _Operation | None, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Event | None = None  # on a call: its return event
        self.prev: _Event | None = None
        self.next: _Event | None = None


def _linked_list(operations: list[_Operation]) -> _Event:
    """Calls and returns in real-time order, behind a sentinel head the walk restarts from."""
    timeline: list[tuple[int, _Event]] = []
    for op in operations:
        call = _Event(op, is_call=True)
        call.match = _Event(op, is_call=False)
        timeline += [(op.invocation.index, call), (op.completion.index, call.match)]
    timeline.sort(key=lambda item: item[0])
    head = previous = _Event(None, is_call=True)
    for _, event in timeline:
        previous.next, event.prev = event, previous
        previous = event
    return head


def _lift(call: _Event) -> None:
    """Take a call and its return out of the list: the operation is placed."""
    for event in (call, call.match):
        assert event is not None and event.prev is not None
        event.prev.next = event.next
        if event.next is not None:
            event.next.prev = event.prev


def _put_back(call: _Event) -> None:
    """Undo ``_lift`` (in reverse order, so each event finds its neighbours as it left them)."""
    for event in (call.match, call):
        assert event is not None and event.prev is not None
        event.prev.next = event
        if event.next is not None:
            event.next.prev = event


class _Indeterminate:
    """A key's info operations as groups of twins, ordered by first invocation, and which are worth trying where."""

    def __init__(self, twins: list[_Twins]) -> None:
        self.twins = twins
        self._firsts = [group.ops[0].invocation.index for group in twins]
        # _expected[k]: the values the info cas operations among the first k groups need.
        self._expected: list[frozenset[Any]] = [frozenset()]
        for group in twins:
            needs = {group.ops[0].argument[0]} if group.ops[0].f == "cas" else set()
            self._expected.append(self._expected[-1] | needs)

    def candidates(self, head: _Event, bound: int) -> list[_Twins]:
        """The groups worth trying where the walk is stuck at the return with event index ``bound``.

        A group's next operation must have been invoked before that return, and
        by rule 2 must leave a value something could observe next: a call before
        the return (a read of it, a cas expecting it) or an info cas.
        """
        invoked = bisect_left(self._firsts, bound)
        if not invoked:
            return []
        wanted = set(self._expected[invoked])
        event = head.next
        while event is not None and event.is_call:
            assert event.op is not None
            if event.op.f == "read":
                wanted.add(event.op.output)
            elif event.op.f == "cas":
                wanted.add(event.op.argument[0])
            event = event.next
        return [
            group
            for group in self.twins[:invoked]
            if group.leaves in wanted
            and group.placed < len(group.ops)
            and group.ops[group.placed].invocation.index < bound
        ]


def _explored(
    cache: dict[tuple[int, Any, bool], list[int]], placed_ok: int, state: Any, after_info: bool, placed_info: int
) -> bool:
    """Lowe's cache, with subsumption: has this configuration, or one at least as capable, been explored?

    Configurations with the same ``ok`` operations placed, the same state and
    the same ``after_info`` differ only in the ``info`` operations they used.
    One that used a subset of another's can copy any completion of the other
    step for step (substituting earlier twins, rule 3), so once the smaller
    has been explored the larger needs no search. The cache keeps, per
    (``ok`` set, state, ``after_info``), the minimal ``info`` sets explored.
    """
    seen = cache.get((placed_ok, state, after_info))
    if seen is None:
        cache[placed_ok, state, after_info] = [placed_info]
        return False
    for other in seen:
        if other & placed_info == other:
            return True
    seen[:] = [other for other in seen if other & placed_info != placed_info]
    seen.append(placed_info)
    return False


@dataclass
class _Stuck:
    """Where the longest partial linearization ended: what it could not place, and in what state."""

    depth: int
    blocker: _Operation
    state: Any
    tail: list[_Operation]


# One choice of the search, to undo when backtracking: the operation, its call event (None for an info
# operation), the candidate groups of twins where it was chosen and its position among them, and the state and
# after_info before it.
_Frame = tuple[_Operation, "_Event | None", list[_Twins], int, Any, bool]


def _search(ok_ops: list[_Operation], info: _Indeterminate, deadline: float) -> tuple[str, _Stuck | None]:
    head = _linked_list(ok_ops)
    remaining = len(ok_ops)
    state: Any = None  # an absent register
    placed_ok = placed_info = 0
    after_info = False  # was the last operation placed an info one? (rule 2)
    cache: dict[tuple[int, Any, bool], list[int]] = {}
    stack: list[_Frame] = []
    stuck: _Stuck | None = None
    event: _Event | None = head.next  # walking ok calls; None while trying info operations
    candidates: list[_Twins] = []  # where the walk is stuck: the groups of twins worth trying there
    candidate = 0  # the next of them to try
    steps = 0
    while remaining:
        steps += 1
        if steps % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            return UNKNOWN, None
        if event is not None:
            op = event.op
            assert op is not None, "an unplaced ok operation's return ends every walk"
            if not event.is_call:  # the first pending return: only info operations invoked before it may help
                if stuck is None or len(stack) > stuck.depth:
                    stuck = _Stuck(len(stack), op, state, [frame[0] for frame in stack[-_TAIL:]])
                event, candidates, candidate = None, info.candidates(head, op.completion.index), 0
                continue
            accepted, after = _placeable(state, op, after_info)
            if accepted and not _explored(cache, placed_ok | op.bit, after, False, placed_info):
                stack.append((op, event, candidates, candidate, state, after_info))
                _lift(event)
                placed_ok, state, after_info, remaining = placed_ok | op.bit, after, False, remaining - 1
                event = head.next
            else:
                event = event.next
            continue
        if candidate < len(candidates):
            group = candidates[candidate]
            op = group.ops[group.placed]
            accepted, after = _placeable(state, op, after_info)
            if accepted and not _explored(cache, placed_ok, after, True, placed_info | op.bit):
                stack.append((op, None, candidates, candidate, state, after_info))
                group.placed += 1
                placed_info, state, after_info = placed_info | op.bit, after, True
                event = head.next
            else:
                candidate += 1
            continue
        if not stack:
            assert stuck is not None
            return VIOLATION, stuck
        op, call, candidates, candidate, state, after_info = stack.pop()
        if call is None:
            candidates[candidate].placed -= 1
            placed_info &= ~op.bit
            candidate += 1
        else:
            placed_ok &= ~op.bit
            remaining += 1
            _put_back(call)
            event = call.next
    return OK, None


def _summary(op: _Operation) -> dict[str, Any]:
    completed = None if op.completion.index == NEVER_INDEX else round(op.completion.time, 6)
    return {
        "index": op.invocation.index,
        "process": op.invocation.process,
        "f": op.f,
        "value": op.invocation.value,
        "output": op.completion.value if op.f == "read" else None,
        "outcome": op.completion.type,
        "node": op.invocation.node,
        "invoked": round(op.invocation.time, 6),
        "completed": completed,
    }


def _anomaly(key: str, stuck: _Stuck, operations: list[_Operation]) -> dict[str, Any]:
    """The operation no linearization could place, the operations running at the same time, and the tail of
    the longest linearization found: enough to replay the contradiction by hand."""
    start, end = stuck.blocker.invocation.index, stuck.blocker.completion.index
    concurrent = [
        op
        for op in operations
        if op is not stuck.blocker and op.invocation.index < end and (op.info or op.completion.index > start)
    ]
    concurrent.sort(key=lambda op: abs(op.invocation.index - start))
    blocker = _summary(stuck.blocker)
    return {
        "key": key,
        "kind": "nonlinearizable",
        "ops": [blocker, *(_summary(op) for op in concurrent[:_CONCURRENT])],
        "cannot_linearize": blocker,
        "state": stuck.state,
        "linearized_before": [_summary(op) for op in stuck.tail],
    }


def check(ops: Iterable[Op], time_budget: float = 60.0) -> dict[str, Any]:
    """Check every key of a register history within ``time_budget`` seconds in total.

    ``valid`` is False if any key is not linearizable, "unknown" if none is
    proven wrong but some ran out of time, True otherwise.
    """
    deadline = time.monotonic() + time_budget
    verdicts: dict[str, str] = {}
    anomalies = []
    for key, key_ops in sorted(by_key(ops).items()):
        ok_ops, twins = _operations(key_ops)
        verdicts[key], stuck = _search(ok_ops, _Indeterminate(twins), deadline)
        if stuck is not None:
            anomalies.append(_anomaly(key, stuck, ok_ops + [op for group in twins for op in group.ops]))
    valid: bool | str = True
    if anomalies:
        valid = False
    elif UNKNOWN in verdicts.values():
        valid = UNKNOWN
    return {"valid": valid, "keys": verdicts, "anomalies": anomalies}


def _finals(ok_ops: list[_Operation], twins: list[_Twins]) -> tuple[list[Any], _Operation | None, set[Any]]:
    """The values a key may hold after all its operations, the acknowledged write that began last, and every
    value any write or cas that did not fail may have left."""
    writes = [op for op in ok_ops if op.f != "read"] + [op for group in twins for op in group.ops]
    last = max((op for op in writes if not op.info), key=lambda op: op.invocation.index, default=None)
    begun = last.invocation.index if last is not None else -1
    leaves = [op.argument if op.f == "write" else op.argument[1] for op in writes]
    possible = [value for op, value in zip(writes, leaves, strict=True) if op.info or op.completion.index > begun]
    if last is None:
        possible.append(None)
    return list(dict.fromkeys(possible)), last, set(leaves)


def check_final(ops: Iterable[Op], final_reads: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """After healing: each node's value of each register one the writes allow (see the module docstring), and
    every node holding the same value.

    ``final_reads`` maps node to key to the value that node holds (None:
    absent); a key a node did not report counts as absent.
    """
    anomalies: list[dict[str, Any]] = []
    operations = by_key(ops)
    for key in sorted({key for values in final_reads.values() for key in values} | set(operations)):
        held = {node: values.get(key) for node, values in sorted(final_reads.items())}
        possible, last, written = _finals(*_operations(operations.get(key, [])))
        nodes_by_value: dict[Any, list[str]] = {}
        for node, value in held.items():
            nodes_by_value.setdefault(value, []).append(node)
        for value, nodes in nodes_by_value.items():
            if _freeze(value) in possible:
                continue
            details = {
                "value": value,
                "nodes": nodes,
                "reason": "superseded" if _freeze(value) in written else "never written",
                "possible": possible[:_CONCURRENT],
                "last_acknowledged": _summary(last) if last is not None else None,
            }
            anomalies.append({"key": key, "kind": "impossible_final", "details": details})
        if len(nodes_by_value) > 1:
            anomalies.append({"key": key, "kind": "replicas_differ", "details": {"values": held}})
    return anomalies
