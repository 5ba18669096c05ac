"""Histories: every operation as an invocation and then one completion, Jepsen style.

An operation is ``invoke`` followed by exactly one completion from the same
process: ``ok`` (it happened), ``fail`` (it certainly did not) or ``info``
(it may or may not have: a timeout, a dropped connection, a 503 that says
``applied: unknown``). The checkers need nothing but this: real-time order
comes from ``index``, which the recorder assigns under one lock, so an event
recorded after another really happened after it. ``time`` (seconds since the
run started) is for people and plots.

A history is stored as JSON lines, one event per line, exactly the fields of
``Op``::

    {"index": 0, "process": 3, "type": "invoke", "f": "cas", "key": "r1", "value": [1, 4],
     "time": 0.0132, "node": "n2", "error": null}
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

COMPLETIONS = ("ok", "fail", "info")
TYPES = ("invoke", *COMPLETIONS)

# A completion that was never recorded sorts after every real event: the operation may take effect at any later time.
NEVER_INDEX = sys.maxsize
NEVER_TIME = float("inf")


@dataclass(frozen=True)
class Op:
    """One event of a history.

    ``value`` depends on ``f`` and ``type``: a write carries the value written,
    a cas ``[expected, new]``, an append the value appended; an ``ok`` read
    carries what it read (``None``: the register was absent; a list for a
    list-append read).
    """

    index: int
    process: int
    type: str
    f: str
    key: str
    value: Any
    time: float
    node: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"op {self.index}: type must be one of {TYPES}, not {self.type!r}")


def pairs(ops: Iterable[Op]) -> list[tuple[Op, Op]]:
    """(invocation, completion) per operation, in invocation order.

    A process whose client died mid-operation leaves an invocation without a
    completion (at the end of the history, or followed by another invocation
    of the same process, if the id was reused). That operation may or may not
    have happened, so it is paired with a synthetic ``info`` completion at
    infinite time, which no file ever contains.
    """
    pending: dict[int, Op] = {}
    done: list[tuple[Op, Op]] = []
    for op in sorted(ops, key=lambda o: o.index):
        if op.type == "invoke":
            crashed = pending.pop(op.process, None)
            if crashed is not None:
                done.append((crashed, _never_completed(crashed)))
            pending[op.process] = op
            continue
        invocation = pending.pop(op.process, None)
        if invocation is None:
            raise ValueError(f"op {op.index}: {op.type} completion of process {op.process}, which invoked nothing")
        done.append((invocation, op))
    done.extend((invocation, _never_completed(invocation)) for invocation in pending.values())
    return sorted(done, key=lambda pair: pair[0].index)


def _never_completed(invocation: Op) -> Op:
    return Op(
        NEVER_INDEX,
        invocation.process,
        "info",
        invocation.f,
        invocation.key,
        invocation.value,
        NEVER_TIME,
        invocation.node,
        "never completed",
    )


def by_key(ops: Iterable[Op]) -> dict[str, list[Op]]:
    """Events grouped per key, each group in the original order: keys are checked independently."""
    groups: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        groups[op.key].append(op)
    return dict(groups)


class History:
    """A finished (or loaded) history: its events and the views the checkers and reports need."""

    def __init__(self, ops: Iterable[Op] = ()) -> None:
        self.ops: list[Op] = list(ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(list(self.ops))  # a snapshot: a recorder may still be appending

    def __len__(self) -> int:
        return len(self.ops)

    def pairs(self) -> list[tuple[Op, Op]]:
        return pairs(self)

    def by_key(self) -> dict[str, list[Op]]:
        return by_key(self)

    def write_jsonl(self, path: Path) -> None:
        with open(path, "w") as out:
            out.writelines(json.dumps(asdict(op)) + "\n" for op in self)

    @classmethod
    def read_jsonl(cls, path: Path) -> History:
        with open(path) as lines:
            return cls(Op(**json.loads(line)) for line in lines if line.strip())


class Recorder(History):
    """The history being written by concurrent client threads.

    Appending and numbering happen under one lock, so ``index`` order is a
    real-time order every checker can rely on. The recorder refuses a
    second invocation by a process that has not completed its first, and a
    completion of anything but the process's open invocation: either would
    be a bug in the client loop, and would make the history meaningless.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        started = time.monotonic()
        self._clock = clock or (lambda: time.monotonic() - started)
        self._lock = threading.Lock()
        self._open: dict[int, Op] = {}

    def invoke(self, process: int, f: str, key: str, value: Any, node: str | None = None) -> Op:
        """Record an invocation; the returned op is the handle to complete it with."""
        with self._lock:
            if process in self._open:
                raise ValueError(f"process {process} invoked again before completing op {self._open[process].index}")
            op = Op(len(self.ops), process, "invoke", f, key, value, self._clock(), node)
            self._open[process] = op
            self.ops.append(op)
            return op

    def complete(self, handle: Op, type: str, value: Any = None, error: str | None = None) -> Op:
        """Record how ``handle`` ended; ``value=None`` keeps the invoked value (a write returns what it wrote)."""
        if type not in COMPLETIONS:
            raise ValueError(f"completion must be one of {COMPLETIONS}, not {type!r}")
        with self._lock:
            if self._open.get(handle.process) is not handle:
                raise ValueError(f"op {handle.index} of process {handle.process} is not open")
            del self._open[handle.process]
            op = Op(
                len(self.ops),
                handle.process,
                type,
                handle.f,
                handle.key,
                handle.value if value is None else value,
                self._clock(),
                handle.node,
                error,
            )
            self.ops.append(op)
            return op
