"""Histories: every operation as an invocation and then one completion, Jepsen style.

An operation is ``invoke`` followed by exactly one completion from the same
process: ``ok`` (it happened), ``fail`` (it certainly did not) or ``info``
(it may or may not have: a timeout, a dropped connection, a 503 that says
``applied: unknown``). ``index`` is the global order in which events were
recorded (under a lock, so it is consistent with real time); ``time`` is
seconds since the run started. Stored as JSON lines, one event per line.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

COMPLETIONS = ("ok", "fail", "info")


@dataclass(frozen=True)
class Op:
    index: int
    process: int
    type: str  # invoke | ok | fail | info
    f: str  # read | write | cas | append
    key: str
    value: Any
    time: float
    node: str | None = None
    error: str | None = None


class Recorder:
    """Thread-safe history being written by concurrent clients."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        started = time.monotonic()
        self._clock = clock or (lambda: time.monotonic() - started)
        self._lock = threading.Lock()
        self.ops: list[Op] = []

    def invoke(self, process: int, f: str, key: str, value: Any, node: str | None = None) -> Op:
        with self._lock:
            op = Op(len(self.ops), process, "invoke", f, key, value, self._clock(), node)
            self.ops.append(op)
            return op

    def complete(self, invocation: Op, type: str, value: Any = None, error: str | None = None) -> Op:
        if type not in COMPLETIONS:
            raise ValueError(f"completion must be one of {COMPLETIONS}, not {type!r}")
        with self._lock:
            op = Op(len(self.ops), invocation.process, type, invocation.f, invocation.key,
                    invocation.value if value is None else value, self._clock(), invocation.node, error)
            self.ops.append(op)
            return op

    def write_jsonl(self, path: Path) -> None:
        with open(path, "w") as out:
            for op in self.ops:
                out.write(json.dumps(asdict(op)) + "\n")


def load_jsonl(path: Path) -> list[Op]:
    with open(path) as lines:
        return [Op(**json.loads(line)) for line in lines if line.strip()]


def pairs(ops: Iterable[Op]) -> list[tuple[Op, Op]]:
    """(invocation, completion) per operation in invocation order.

    An invocation that never completed (its client died) is paired with a
    synthetic ``info`` completion at infinite time: it may have happened.
    """
    pending: dict[int, Op] = {}
    done: list[tuple[Op, Op]] = []
    for op in sorted(ops, key=lambda o: o.index):
        if op.type == "invoke":
            if op.process in pending:
                raise ValueError(f"process {op.process} invoked twice without completing (index {op.index})")
            pending[op.process] = op
        else:
            invocation = pending.pop(op.process, None)
            if invocation is None:
                raise ValueError(f"completion without invocation at index {op.index}")
            done.append((invocation, op))
    for invocation in pending.values():
        done.append((invocation, Op(10**12, invocation.process, "info", invocation.f, invocation.key,
                                    invocation.value, float("inf"), invocation.node, "never completed")))
    return sorted(done, key=lambda pair: pair[0].index)
