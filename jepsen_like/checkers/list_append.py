"""Session turns as append-only lists: lost, duplicated, reordered, stale and phantom appends.

Each append adds a unique value to the list at a key (a session); each read
returns the whole list. Appends are totally ordered by the replicated log, so
every read of a key must be a prefix of one sequence, and a read must hold
every value that was certainly in the log when it began: values whose append
was acknowledged before, and values an earlier completed read already showed.

A read also begins, as far as the log is concerned, no earlier than the
latest append among the values it shows: each of those was added to the log
after its append began, behind everything certainly there by then. So a read
showing B must hold A if A was certainly in the log when B's append began,
even if the read itself began earlier (transitively too: whatever had to
precede A was certainly in the log before A's append began, so before B's).

Anomalies (one per value, with the number of reads it concerns, or one per
read where the read is the culprit):

- ``duplicate``: a value more than once in a read (an append applied twice;
  an ``info`` append may appear or not, but at most once);
- ``phantom``: a value nobody appended, or whose append began only after
  the read had completed; ``failed_append_visible``: a value whose append
  was reported as certainly not applied;
- ``reordered``: a read that is not a prefix of the longest read, or a
  longest read that puts a value after one whose append began only once the
  first was acknowledged (the log must respect real-time order);
- ``stale_read``: a read missing values that were certainly in the log when
  it began, which a later read shows again: the read came from behind;
- ``lost``: a value that was certainly in the log, missing from a read that
  began afterwards and from every read that began after that one: it is
  gone, as far as the history can tell (``check_final`` asks every node).
  Both name, as ``because_it_shows``, the value the read shows that
  required the missing one, when the read's own start did not.

Sessions grow long, and every read returns all of one, so checking each read
value by value costs reads x length. In a healthy history every read is a
prefix of the longest one, so a "clean" read (a prefix, showing nothing
appended after it completed) is checked in constant time against arrays
indexed by position in the longest read; only the other reads, anomalous by
definition, are checked value by value. The latest append among a clean
read's values is one more look-up, in an array of running maxima over the
longest read.

After healing, ``check_final`` holds every node's lists to the acknowledged
appends: each one present, once, and in an order real time allows (an
append acknowledged before another began comes first), the same on every
node. Being the same on every node is not enough: a leader that reordered
or dropped an entry before replicating it leaves the replicas in agreement.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from jepsen_like.history import NEVER_INDEX, Op, by_key, pairs

_SHOWN = 10  # values quoted from a long list in an anomaly's details

_Read = tuple[Op, Op]


def _describe(read: _Read) -> dict[str, Any]:
    invocation, completion = read
    return {
        "index": invocation.index,
        "process": invocation.process,
        "node": invocation.node,
        "invoked": round(invocation.time, 6),
        "completed": round(completion.time, 6),
        "length": len(completion.value),
    }


class _Findings:
    """Anomalies of one key; the same bad value seen in many reads counts on one anomaly instead of flooding."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.anomalies: list[dict[str, Any]] = []
        self._per_value: dict[tuple[str, Any], dict[str, Any]] = {}

    def add(self, kind: str, **details: Any) -> dict[str, Any]:
        self.anomalies.append({"kind": kind, "key": self.key, "details": details})
        return details

    def per_value(self, kind: str, value: Any, read: _Read, reads: int = 1, **details: Any) -> None:
        """Report ``value`` once per kind; ``reads`` counts the reads it was found in (or, if lost, missing from),
        and ``read`` is an example."""
        seen = self._per_value.get((kind, value))
        if seen is not None:
            seen["reads"] += reads
            return
        self._per_value[(kind, value)] = self.add(kind, value=value, reads=reads, read=_describe(read), **details)


@dataclass
class _Key:
    """One key's history, and what the passes over it learn."""

    found: _Findings
    appends: dict[Any, _Read]
    reads: list[_Read]  # ok reads, in invocation order
    longest: list[Any]
    latest: list[int] = field(default_factory=list)  # n -> latest invocation among the first n values' appends
    first: dict[Any, int] = field(default_factory=dict)  # value -> first position in the longest read
    known_at: dict[Any, int] = field(default_factory=dict)  # value -> event index from which it was surely logged
    last_seen: dict[Any, int] = field(default_factory=dict)  # value -> invocation index of the last read showing it

    def legitimate(self, value: Any) -> bool:
        """Appended, and not certainly failed: a value a read may show (if it began before the read ended)."""
        append = self.appends.get(value)
        return append is not None and append[1].type != "fail"


def _appends(key: str, operations: list[_Read]) -> dict[Any, _Read]:
    """Each appended value's operation; values must be unique per key, or a read could not say which it shows."""
    appends: dict[Any, _Read] = {}
    for invocation, completion in operations:
        if invocation.f == "append":
            if invocation.value in appends:
                raise ValueError(
                    f"op {invocation.index}: {invocation.value!r} appended to {key} twice; "
                    "the checker needs unique values"
                )
            appends[invocation.value] = (invocation, completion)
    return appends


def _check_key(key: str, operations: list[_Read]) -> list[dict[str, Any]]:
    appends = _appends(key, operations)
    reads = [(i, c) for i, c in operations if i.f == "read" and c.type == "ok"]
    longest = list(max((c.value for _, c in reads), key=len, default=[]))
    state = _Key(_Findings(key), appends, reads, longest)
    for position, value in enumerate(longest):
        state.first.setdefault(value, position)
    state.known_at = {value: c.index for value, (_, c) in appends.items() if c.type == "ok"}
    clean, odd = _split(state)
    _check_clean_values(state, clean)
    for read in odd:
        _check_read_values(state, read)
    _check_order(state, odd)
    _check_missing(state, clean, odd)
    return state.found.anomalies


def _split(state: _Key) -> tuple[list[_Read], list[_Read]]:
    """Clean reads (prefixes of the longest, showing nothing appended after they completed) and the others."""
    invoked = (state.appends[v][0].index if v in state.appends else -1 for v in state.longest)
    state.latest = [-1, *accumulate(invoked, max)]
    clean: list[_Read] = []
    odd: list[_Read] = []
    for read in state.reads:
        values = read[1].value
        is_prefix = list(values) == state.longest[: len(values)]
        (clean if is_prefix and state.latest[len(values)] < read[1].index else odd).append(read)
    return clean, odd


def _check_clean_values(state: _Key, clean: list[_Read]) -> None:
    """Value anomalies and what clean reads prove, one pass over the longest read for all of them.

    A clean read of length n holds exactly the first n values of the longest
    read, so a value first at position p is in every clean read longer than p.
    """
    if not clean:
        return
    lengths = sorted(len(c.value) for _, c in clean)
    example = max(clean, key=lambda read: len(read[1].value))
    # Per position p, over the clean reads longer than p: the earliest completion and the latest invocation.
    earliest_completion = [NEVER_INDEX] * (lengths[-1] + 1)
    latest_invocation = [-1] * (lengths[-1] + 1)
    for invocation, completion in clean:
        n = len(completion.value)
        earliest_completion[n] = min(earliest_completion[n], completion.index)
        latest_invocation[n] = max(latest_invocation[n], invocation.index)
    earliest_completion = list(accumulate(reversed(earliest_completion), min))[::-1]
    latest_invocation = list(accumulate(reversed(latest_invocation), max))[::-1]
    copies: Counter[Any] = Counter()
    for position, value in enumerate(state.longest[: lengths[-1]]):
        copies[value] += 1
        holding = len(lengths) - bisect_right(lengths, position)  # clean reads that hold this position
        if copies[value] == 2:
            state.found.per_value("duplicate", value, example, reads=holding)
        if copies[value] > 1:
            continue
        if value not in state.appends:
            state.found.per_value("phantom", value, example, reads=holding, reason="never appended")
        elif not state.legitimate(value):
            state.found.per_value("failed_append_visible", value, example, reads=holding)
        else:
            after = earliest_completion[position + 1]
            state.known_at[value] = min(state.known_at.get(value, NEVER_INDEX), after)
            state.last_seen[value] = max(state.last_seen.get(value, -1), latest_invocation[position + 1])


def _check_read_values(state: _Key, read: _Read) -> None:
    """Value anomalies and what one read proves, value by value (for reads that are not clean)."""
    invocation, completion = read
    for value, copies in Counter(completion.value).items():
        if copies > 1:
            state.found.per_value("duplicate", value, read)
        append = state.appends.get(value)
        if append is None:
            state.found.per_value("phantom", value, read, reason="never appended")
        elif append[0].index > completion.index:
            state.found.per_value("phantom", value, read, reason="appended only after the read completed")
        elif not state.legitimate(value):
            state.found.per_value("failed_append_visible", value, read)
        else:
            state.known_at[value] = min(state.known_at.get(value, NEVER_INDEX), completion.index)
            state.last_seen[value] = max(state.last_seen.get(value, -1), invocation.index)


def _check_order(state: _Key, odd: list[_Read]) -> None:
    """Every read a prefix of the longest one, and the longest one in an order real time allows."""
    for read in odd:
        values = list(read[1].value)
        if values == state.longest[: len(values)]:
            continue  # a prefix, odd only for a value appended after it completed
        at = next(i for i, (a, b) in enumerate(zip(values, state.longest, strict=False)) if a != b)
        window = slice(max(at - 2, 0), at + 3)
        state.found.add(
            "reordered", read=_describe(read), position=at, got=values[window], longest=state.longest[window]
        )
    inversion = _real_time_inversion(state.longest, state.appends)
    if inversion is not None:
        state.found.add("reordered", reason=_INVERSION, before=inversion[0], after=inversion[1])


_INVERSION = "an append acknowledged before another began comes after it"


def _real_time_inversion(values: Sequence[Any], appends: dict[Any, _Read]) -> tuple[Any, Any] | None:
    """The first pair (earlier in ``values``, later) whose later value's append was acknowledged before the
    earlier one's began, if any: one pass from the end, keeping the earliest acknowledgement seen so far."""
    earliest_ack, acked_value = NEVER_INDEX, None
    for value in reversed(values):
        append = appends.get(value)
        if append is None:
            continue
        invocation, completion = append
        if earliest_ack < invocation.index:
            return value, acked_value
        if completion.type == "ok" and completion.index < earliest_ack:
            earliest_ack, acked_value = completion.index, value
    return None


def _horizon(state: _Key, read: _Read) -> tuple[int, Any]:
    """When ``read`` began as far as the log is concerned, and the value that says so (None: its invocation).

    That is the latest invocation among the appends of the values it shows
    (those appended before it completed: a phantom proves nothing), if later
    than the read's own.
    """
    invocation, completion = read
    horizon, shown = invocation.index, None
    for value in completion.value:
        append = state.appends.get(value)
        if append is not None and horizon < append[0].index < completion.index:
            horizon, shown = append[0].index, value
    return horizon, shown


def _check_missing(state: _Key, clean: list[_Read], odd: list[_Read]) -> None:
    """Stale reads and lost values: what was certainly in the log when a read began must be in it.

    "Began" is the read's horizon (see ``_horizon``). A clean read of length n
    misses something iff some value not among the first n of the longest read
    was known before its horizon: one look-up in ``unseen_from``, the earliest
    a value first at position n or later (or nowhere) became known, against
    the later of its invocation and ``latest[n]``.
    """
    end = len(state.longest)
    unseen_from = [NEVER_INDEX] * (end + 1)
    for value, index in state.known_at.items():
        position = state.first.get(value, end)
        unseen_from[position] = min(unseen_from[position], index)
    unseen_from = list(accumulate(reversed(unseen_from), min))[::-1]
    known = sorted((index, value) for value, index in state.known_at.items())
    known_indices = [index for index, _ in known]
    suspects = [
        read for read in clean if unseen_from[len(read[1].value)] < max(read[0].index, state.latest[len(read[1].value)])
    ] + odd
    for read in sorted(suspects, key=lambda r: r[0].index):
        invocation, completion = read
        horizon, shown = _horizon(state, read)
        present = set(completion.value)
        missing = [v for _, v in known[: bisect_left(known_indices, horizon)] if v not in present]
        # Values the read's own invocation would not have required: only what it shows does.
        implied = {value for value in missing if state.known_at[value] >= invocation.index}
        stale = [value for value in missing if state.last_seen.get(value, -1) > completion.index]
        if stale:
            because = {"because_it_shows": shown} if implied.intersection(stale) else {}
            state.found.add(
                "stale_read", read=_describe(read), missing=stale[:_SHOWN], missing_count=len(stale), **because
            )
        for value in missing:
            if state.last_seen.get(value, -1) <= completion.index:
                because = {"because_it_shows": shown} if value in implied else {}
                state.found.per_value("lost", value, read, known_since_index=state.known_at[value], **because)


def check(ops: Iterable[Op]) -> dict[str, Any]:
    """Check every key of a list-append history."""
    anomalies = [anomaly for key, key_ops in sorted(by_key(ops).items()) for anomaly in _check_key(key, pairs(key_ops))]
    return {"valid": not anomalies, "anomalies": anomalies, "counts": dict(Counter(a["kind"] for a in anomalies))}


def check_final(ops: Iterable[Op], final_reads: Mapping[str, Mapping[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """After healing: every acknowledged append on every node, once, in an order real time allows, and all nodes
    holding the same lists.

    ``ops`` is the history; ``final_reads`` maps node to key to the list that
    node holds; a key a node did not report counts as an empty list.
    """
    anomalies = []

    def anomaly(kind: str, key: str, **details: Any) -> None:
        anomalies.append({"kind": kind, "key": key, "details": details})

    appends = {key: _appends(key, pairs(key_ops)) for key, key_ops in by_key(ops).items()}
    keys = sorted({key for lists in final_reads.values() for key in lists} | set(appends))
    for node, lists in sorted(final_reads.items()):
        for key in keys:
            present = lists.get(key) or []
            held = set(present)
            key_appends = appends.get(key, {})
            missing = [value for value, (_, done) in key_appends.items() if done.type == "ok" and value not in held]
            if missing:
                anomaly("lost_on_node", key, node=node, missing=missing[:_SHOWN], missing_count=len(missing))
            duplicated = [value for value, copies in Counter(present).items() if copies > 1]
            if duplicated:
                anomaly("duplicate_on_node", key, node=node, values=duplicated[:_SHOWN])
            inversion = _real_time_inversion(present, key_appends)
            if inversion is not None:
                anomaly("reordered_on_node", key, node=node, reason=_INVERSION, before=inversion[0], after=inversion[1])
    for key in keys:
        if len({tuple(lists.get(key) or []) for lists in final_reads.values()}) > 1:
            anomaly(
                "replicas_differ",
                key,
                lengths={node: len(lists.get(key) or []) for node, lists in sorted(final_reads.items())},
            )
    return anomalies
