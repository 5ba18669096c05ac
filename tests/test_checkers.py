"""The checkers on hand-made and simulated histories: they must accept every valid one and catch every broken one.

Hand-made histories cover the cases from the literature one by one. The
property tests simulate clients against a real sequential model: each
operation takes effect at one instant inside its invocation-completion
window, so the history is linearizable by construction; corrupting one read
must then be caught.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like import runner
from jepsen_like.checkers import chat, linearizability, list_append
from jepsen_like.history import History, Op, Recorder, by_key, pairs
from jepsen_like.workloads import ListAppendWorkload, RegisterWorkload


class H:
    """Builds a history event by event in real-time order: ``H().inv(1, "write", 3).ok(1)``."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.recorder = Recorder(lambda: self.clock)
        self.open: dict[int, Op] = {}

    def inv(self, process: int, f: str, value: Any = None, key: str = "k") -> H:
        self.clock += 1
        self.open[process] = self.recorder.invoke(process, f, key, value)
        return self

    def _done(self, process: int, kind: str, value: Any = None) -> H:
        self.clock += 1
        self.recorder.complete(self.open.pop(process), kind, value)
        return self

    def ok(self, process: int, value: Any = None) -> H:
        return self._done(process, "ok", value)

    def fail(self, process: int) -> H:
        return self._done(process, "fail")

    def info(self, process: int) -> H:
        return self._done(process, "info")

    @property
    def ops(self) -> list[Op]:
        return self.recorder.ops


# --------------------------------------------------------------------- history
def test_jsonl_round_trip(tmp_path: Path) -> None:
    history = H().inv(1, "cas", [1, 2], key="r1").fail(1).inv(2, "read", key="r1").ok(2, None).inv(3, "write", 4)
    history.recorder.write_jsonl(tmp_path / "history.jsonl")
    loaded = History.read_jsonl(tmp_path / "history.jsonl")
    assert loaded.ops == history.ops
    assert sorted(loaded.by_key()) == ["k", "r1"]
    (cas, cas_done), (read, _), (write, never) = loaded.pairs()
    assert (cas.value, cas_done.type, read.f, write.value) == ([1, 2], "fail", "read", 4)
    assert never.type == "info" and never.time == float("inf")  # the write's client died


def test_a_process_reusing_its_id_after_crashing_left_an_indeterminate_op() -> None:
    ops = [
        Op(0, 1, "invoke", "write", "k", 1, 0.0),
        Op(1, 1, "invoke", "write", "k", 2, 1.0),
        Op(2, 1, "ok", "write", "k", 2, 2.0),
    ]
    (first, crashed), (second, done) = pairs(ops)
    assert (first.value, crashed.type, second.value, done.type) == (1, "info", 2, "ok")


def test_recorder_refuses_malformed_histories() -> None:
    recorder = Recorder()
    handle = recorder.invoke(1, "read", "k", None)
    with pytest.raises(ValueError):
        recorder.invoke(1, "read", "k", None)
    recorder.complete(handle, "ok", 3)
    with pytest.raises(ValueError):
        recorder.complete(handle, "ok", 3)
    with pytest.raises(ValueError):
        recorder.complete(recorder.invoke(2, "read", "k", None), "done")
    with pytest.raises(ValueError):
        pairs([Op(0, 1, "ok", "read", "k", 1, 0.0)])


# --------------------------------------------------------------------- register
def linearizable(history: H) -> Any:
    return linearizability.check(history.ops, time_budget=5)["valid"]


def test_sequential_history_is_linearizable() -> None:
    assert (
        linearizable(
            H().inv(1, "write", 1).ok(1).inv(1, "read").ok(1, 1).inv(2, "cas", [1, 2]).ok(2).inv(2, "read").ok(2, 2)
        )
        is True
    )


def test_read_of_absent_register_is_none() -> None:
    assert linearizable(H().inv(1, "read").ok(1, None)) is True
    assert linearizable(H().inv(1, "read").ok(1, 3)) is False


def test_concurrent_read_may_see_either_value() -> None:
    for seen in (None, 1):
        assert linearizable(H().inv(1, "write", 1).inv(2, "read").ok(2, seen).ok(1)) is True


def test_read_before_the_write_was_invoked_cannot_see_it() -> None:
    assert linearizable(H().inv(2, "read").ok(2, 1).inv(1, "write", 1).ok(1)) is False


def test_stale_read_after_a_completed_write() -> None:
    history = H().inv(1, "write", 1).ok(1).inv(1, "write", 2).ok(1).inv(2, "read").ok(2, 1)
    assert linearizable(history) is False


def test_new_then_old_with_an_overlapping_write() -> None:
    """The classic: a write is in flight; one read sees the new value, a later read the old one."""
    history = H().inv(1, "write", 0).ok(1).inv(1, "write", 1).inv(2, "read").ok(2, 1).inv(3, "read").ok(3, 0).ok(1)
    assert linearizable(history) is False
    overlapping_reads = (
        H().inv(1, "write", 0).ok(1).inv(1, "write", 1).inv(2, "read").inv(3, "read").ok(2, 1).ok(3, 0).ok(1)
    )
    assert linearizable(overlapping_reads) is True  # the reads overlap: 0 then 1 is a valid order


def test_info_write_may_or_may_not_have_happened() -> None:
    happened = H().inv(1, "write", 1).ok(1).inv(2, "write", 2).info(2).inv(3, "read").ok(3, 2)
    did_not = H().inv(1, "write", 1).ok(1).inv(2, "write", 2).info(2).inv(3, "read").ok(3, 1)
    assert linearizable(happened) is True
    assert linearizable(did_not) is True
    later = H().inv(2, "write", 2).info(2).inv(3, "read").ok(3, None).inv(3, "read").ok(3, 2)
    assert linearizable(later) is True  # it took effect after the client gave up
    flip_back = H().inv(1, "write", 1).ok(1).inv(2, "write", 2).info(2).inv(3, "read").ok(3, 2).inv(3, "read").ok(3, 1)
    assert linearizable(flip_back) is False  # once seen, it happened: 1 cannot come back
    assert linearizable(H().inv(3, "read").ok(3, 2).inv(2, "write", 2).info(2)) is False  # not before invocation


def test_failed_write_never_happened() -> None:
    history = H().inv(1, "write", 1).ok(1).inv(2, "write", 2).fail(2).inv(3, "read").ok(3, 2)
    assert linearizable(history) is False


def test_a_crashed_client_write_may_take_effect_later() -> None:
    history = H().inv(1, "write", 1).inv(2, "read").ok(2, None).inv(2, "read").ok(2, 1)  # process 1 never returns
    assert linearizable(history) is True


def test_cas_chains() -> None:
    good = (
        H()
        .inv(1, "write", 0)
        .ok(1)
        .inv(1, "cas", [0, 1])
        .ok(1)
        .inv(2, "cas", [0, 2])
        .fail(2)
        .inv(2, "cas", [1, 2])
        .ok(2)
        .inv(3, "read")
        .ok(3, 2)
    )
    assert linearizable(good) is True
    bad = H().inv(1, "write", 0).ok(1).inv(1, "cas", [5, 1]).ok(1)  # succeeded against the wrong value
    assert linearizable(bad) is False
    concurrent = H().inv(1, "write", 0).ok(1).inv(1, "cas", [0, 1]).inv(2, "cas", [0, 2]).ok(2).ok(1)
    assert linearizable(concurrent) is False  # both cannot have seen 0
    chained = H().inv(1, "write", 0).ok(1).inv(1, "cas", [0, 1]).inv(2, "cas", [1, 2]).ok(2).ok(1)
    assert linearizable(chained) is True  # 0 -> 1 -> 2, in that order inside the overlap
    failed_cas = H().inv(1, "write", 0).ok(1).inv(2, "cas", [0, 9]).fail(2).inv(3, "read").ok(3, 9)
    assert linearizable(failed_cas) is False  # a conflict is certain not to have applied
    info_cas = H().inv(1, "write", 0).ok(1).inv(2, "cas", [0, 9]).info(2).inv(3, "read").ok(3, 9)
    assert linearizable(info_cas) is True
    info_chain = (
        H().inv(1, "write", 0).ok(1).inv(2, "write", 5).info(2).inv(3, "cas", [5, 6]).info(3).inv(4, "read").ok(4, 6)
    )
    assert linearizable(info_chain) is True  # two indeterminate operations, one after the other, both applied


def test_keys_are_checked_independently() -> None:
    history = (
        H()
        .inv(1, "write", 1, key="a")
        .inv(2, "write", 1, key="b")
        .ok(1)
        .ok(2)
        .inv(1, "read", key="a")
        .ok(1, 1)
        .inv(2, "read", key="b")
        .ok(2, 1)
    )
    result = linearizability.check(history.ops)
    assert result["valid"] is True and result["keys"] == {"a": "ok", "b": "ok"}
    # Each key alone is linearizable; a checker mixing the registers up would find no order for both.
    crossed = (
        H()
        .inv(1, "write", 1, key="a")
        .inv(2, "write", 1, key="b")
        .inv(3, "read", key="a")
        .ok(3, None)
        .inv(4, "read", key="b")
        .ok(4, None)
        .inv(3, "read", key="b")
        .ok(3, 1)
        .inv(4, "read", key="a")
        .ok(4, 1)
        .ok(1)
        .ok(2)
    )
    assert linearizability.check(crossed.ops)["valid"] is True
    broken = H().inv(1, "write", 1, key="a").ok(1).inv(2, "read", key="b").ok(2, 1)
    result = linearizability.check(broken.ops)
    assert result["keys"] == {"a": "ok", "b": "violation"}


def test_violation_names_the_operation_and_its_context() -> None:
    history = H().inv(1, "write", 0).ok(1).inv(1, "write", 1).inv(2, "read").ok(2, 1).inv(3, "read").ok(3, 0).ok(1)
    (anomaly,) = linearizability.check(history.ops)["anomalies"]
    assert anomaly["kind"] == "nonlinearizable" and anomaly["key"] == "k"
    assert anomaly["cannot_linearize"] == anomaly["ops"][0]
    assert anomaly["cannot_linearize"]["f"] == "read" and anomaly["cannot_linearize"]["output"] == 0
    assert anomaly["state"] == 1  # the longest linearization had already applied the write of 1
    assert {op["f"] for op in anomaly["ops"][1:]} == {"write"}  # the write of 1 overlapped the stuck read


def hard_history(writes: int) -> H:
    """Concurrent info writes, each value read once, and a read of a value nobody wrote, all overlapping: every
    order of the (write, read) pairs must be tried before the impossible read is known to be impossible."""
    history = H()
    for process in range(writes):
        history.inv(process, "write", process)
    for process in range(writes):
        history.info(process)
    for process in range(writes, 2 * writes + 1):
        history.inv(process, "read")
    for process in range(writes, 2 * writes):
        history.ok(process, process - writes)
    return history.ok(2 * writes, "never written")


def test_budget_exhaustion_is_unknown_not_a_verdict() -> None:
    assert linearizable(hard_history(4)) is False  # small enough to search exhaustively
    result = linearizability.check(hard_history(30).ops, time_budget=0.0001)
    assert result["valid"] == "unknown" and result["keys"] == {"k": "unknown"} and result["anomalies"] == []


# --------------------------------------------------------------------- simulated clients
_TICK = 1e-6


@dataclass
class Planned:
    """One operation of a simulated run: when it was invoked, took effect (if ever) and completed."""

    process: int
    f: str
    key: str
    value: Any
    invoked: float
    effect: float | None
    completed: float
    outcome: str = "ok"
    result: Any = None


def plan(
    rng: random.Random,
    operations: int,
    processes: int,
    keys: int,
    choose: Callable[[random.Random], tuple[str, Any]],
    info_rate: float = 0.03,
    fail_rate: float = 0.03,
) -> list[Planned]:
    """Clients issuing operations back to back, each taking effect at one instant inside its window.

    A client whose operation went indeterminate moves on under a new process
    id (as the harness's clients do); that operation may take effect much
    later, or never.
    """
    free = [(rng.random(), process) for process in range(processes)]
    next_process = processes
    planned = []
    for _ in range(operations):
        start, process = heapq.heappop(free)
        # Strictly inside the window, even when the random source returns 0.0 again and again.
        invoked = start + _TICK + rng.random() * 0.2
        effect: float | None = invoked + _TICK + rng.random()
        completed = effect + _TICK + rng.random()
        f, value = choose(rng)
        op = Planned(process, f, f"k{rng.randrange(keys)}", value, invoked, effect, completed)
        roll = rng.random()
        if roll < info_rate and f != "read":  # the harness records reads that did not complete as failed
            op.outcome = "info"
            op.effect = None if rng.random() < 0.5 else invoked + _TICK + rng.random() * 5
            op.completed = invoked + 0.5
            process, next_process = next_process, next_process + 1
        elif roll < info_rate + fail_rate:
            op.outcome, op.effect = "fail", None
        planned.append(op)
        heapq.heappush(free, (op.completed, process))
    return planned


def record(planned: list[Planned], corrupt: Planned | None = None, corruption: Any = None) -> list[Op]:
    """The history the clients would have recorded; ``corrupt`` returns ``corruption`` instead of its result."""
    # At equal times a completion goes first: a process invokes its next operation as the last one completes.
    events = [(op.invoked, 1, op) for op in planned] + [(op.completed, 0, op) for op in planned]
    events.sort(key=lambda event: (event[0], event[1]))
    history = H()
    handles: dict[int, Op] = {}
    for moment, invocation, op in events:
        history.clock = moment
        if invocation:
            handles[id(op)] = history.recorder.invoke(op.process, op.f, op.key, op.value)
            continue
        result = corruption if op is corrupt else op.result
        history.recorder.complete(handles.pop(id(op)), op.outcome, result)
    return history.ops


def register_op(rng: random.Random) -> tuple[str, Any]:
    f = rng.choice(["read", "read", "write", "write", "cas"])
    if f == "read":
        return f, None
    return (f, rng.randrange(5)) if f == "write" else (f, [rng.randrange(5), rng.randrange(5)])


def run_register(planned: list[Planned]) -> None:
    """Apply the operations in effect order to real registers; a cas that does not match fails, as in mcpdb."""
    state: dict[str, Any] = {}
    for op in sorted((op for op in planned if op.effect is not None), key=lambda op: op.effect):
        if op.f == "read":
            op.result = state.get(op.key)
        elif op.f == "write":
            state[op.key] = op.value
        elif state.get(op.key) == op.value[0]:
            state[op.key] = op.value[1]
        elif op.outcome == "ok":
            op.outcome, op.effect = "fail", None


def simulated(processes: int = 8) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The property tests' inputs: a seeded random source, and how many operations, clients and keys to simulate."""
    return lambda test: settings(max_examples=60, deadline=None)(
        given(st.randoms(use_true_random=False), st.integers(1, 60), st.integers(1, processes), st.integers(1, 3))(test)
    )


def register_history(rng: random.Random, operations: int, processes: int, keys: int) -> list[Planned]:
    planned = plan(rng, operations, processes, keys, register_op)
    run_register(planned)
    return planned


@simulated()
def test_simulated_register_histories_are_valid_and_a_corrupted_read_is_caught(
    rng: random.Random, operations: int, processes: int, keys: int
) -> None:
    planned = register_history(rng, operations, processes, keys)
    assert linearizability.check(record(planned), time_budget=10)["valid"] is True
    reads = [op for op in planned if op.f == "read" and op.outcome == "ok"]
    if reads:
        corrupted = linearizability.check(record(planned, rng.choice(reads), "never written"), time_budget=10)
        assert corrupted["valid"] is False


def brute_force_linearizable(ops: list[Op]) -> bool:
    """The definition, tried exhaustively on one key: some order of the operations that respects real time, takes
    in every ok operation and any of the info ones, and that the register accepts step by step."""
    operations = [
        (i.index, c.index if c.type == "ok" else float("inf"), i.f, i.value, c.value)
        for i, c in pairs(ops)
        if c.type == "ok" or (c.type == "info" and i.f != "read")
    ]

    def search(left: frozenset[int], state: Any) -> bool:
        if all(operations[n][1] == float("inf") for n in left):
            return True
        for n in left:
            invoked, _, f, value, output = operations[n]
            if any(operations[m][1] < invoked for m in left):
                continue  # something still unplaced completed before this one began
            if f == "read" and state == output and search(left - {n}, state):
                return True
            if f == "write" and search(left - {n}, value):
                return True
            if f == "cas" and state == value[0] and search(left - {n}, value[1]):
                return True
        return False

    return search(frozenset(range(len(operations))), None)


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 7))
def test_agrees_with_exhaustive_search_on_small_random_histories(rng: random.Random, operations: int) -> None:
    """Random (mostly broken) histories with many indeterminate operations, against the definition itself."""
    history = H()
    pending = list(range(operations))
    started: list[int] = []
    while pending or started:
        if pending and (not started or rng.random() < 0.5):
            process = pending.pop()
            f = rng.choice(["read", "write", "cas"])
            value = None if f == "read" else rng.randrange(3) if f == "write" else [rng.randrange(3), rng.randrange(3)]
            history.inv(process, f, value)
            started.append(process)
            continue
        process = started.pop(rng.randrange(len(started)))
        outcome = rng.choice(["ok", "ok", "info", "fail"])
        if history.open[process].f == "read" and outcome == "ok":
            history.ok(process, rng.choice([None, 0, 1, 2]))
        else:
            history._done(process, outcome)
    assert linearizability.check(history.ops, time_budget=10)["valid"] is brute_force_linearizable(history.ops)


def test_widened_sequential_register_history() -> None:
    """Literature-style generation: a sequential run, then every window widened around its point in the order."""
    rng = random.Random(7)
    planned = []
    for position in range(400):
        f, value = register_op(rng)
        # Windows reach at most 3 positions either way, so a process's (every 9th) operations never overlap.
        planned.append(
            Planned(position % 9, f, "k", value, position - rng.random() * 3, position, position + rng.random() * 3)
        )
    run_register(planned)
    assert linearizability.check(record(planned), time_budget=10)["valid"] is True
    read = next(op for op in reversed(planned) if op.f == "read" and op.outcome == "ok")
    assert linearizability.check(record(planned, read, 99), time_budget=10)["valid"] is False


def test_ten_thousand_operations_over_twenty_keys_are_checked_fast() -> None:
    planned = register_history(random.Random(1), 10_000, 10, 20)
    ops = record(planned)
    started = time.monotonic()
    result = linearizability.check(ops, time_budget=20)
    elapsed = time.monotonic() - started
    assert result["valid"] is True and len(result["keys"]) == 20
    assert elapsed < 5, f"{len(planned) / elapsed:.0f} ops/s"


# --------------------------------------------------------------------- list append
def anomalies(history: H) -> list[str]:
    return sorted(a["kind"] for a in list_append.check(history.ops)["anomalies"])


def test_valid_concurrent_appends_and_reads() -> None:
    history = (
        H()
        .inv(1, "append", 1)
        .inv(2, "append", 2)
        .inv(3, "read")
        .ok(3, [2])
        .ok(1)
        .ok(2)
        .inv(3, "read")
        .ok(3, [2, 1])
        .inv(1, "append", 3)
        .info(1)
        .inv(3, "read")
        .ok(3, [2, 1, 3])
    )
    assert anomalies(history) == []
    info_never_applied = H().inv(1, "append", 1).info(1).inv(2, "read").ok(2, []).inv(2, "read").ok(2, [])
    assert anomalies(info_never_applied) == []
    failed_never_seen = H().inv(1, "append", 1).fail(1).inv(2, "read").ok(2, [])
    assert anomalies(failed_never_seen) == []


def test_lost_and_stale_appends() -> None:
    lost = H().inv(1, "append", 1).ok(1).inv(2, "read").ok(2, [])
    assert anomalies(lost) == ["lost"]
    stale = H().inv(1, "append", 1).ok(1).inv(2, "read").ok(2, []).inv(2, "read").ok(2, [1])
    assert anomalies(stale) == ["stale_read"]
    shrinking = H().inv(1, "append", 1).inv(2, "read").ok(2, [1]).inv(3, "read").ok(3, []).info(1)
    assert anomalies(shrinking) == ["lost"]  # seen once, so in the log, then gone for good
    shrinking.inv(3, "read").ok(3, [1])
    assert anomalies(shrinking) == ["stale_read"]  # it came back: that middle read was from behind
    many = H().inv(1, "append", 1).ok(1)
    for _ in range(5):
        many.inv(2, "read").ok(2, [])
    result = list_append.check(many.ops)
    assert result["counts"] == {"lost": 1} and result["anomalies"][0]["details"]["reads"] == 5


def test_duplicates_reorders_and_phantoms() -> None:
    assert anomalies(H().inv(1, "append", 1).ok(1).inv(2, "read").ok(2, [1, 1])) == ["duplicate"]
    assert anomalies(H().inv(1, "append", 1).info(1).inv(2, "read").ok(2, [1, 1])) == ["duplicate"]
    reordered = (
        H()
        .inv(1, "append", 1)
        .inv(2, "append", 2)
        .ok(1)
        .ok(2)
        .inv(3, "read")
        .ok(3, [1, 2])
        .inv(3, "read")
        .ok(3, [2, 1])
    )
    assert anomalies(reordered) == ["reordered"]
    assert anomalies(H().inv(2, "read").ok(2, [7])) == ["phantom"]
    assert anomalies(H().inv(2, "read").ok(2, [7]).inv(1, "append", 7).ok(1)) == ["phantom"]  # from the future
    assert anomalies(H().inv(1, "append", 1).fail(1).inv(2, "read").ok(2, [1])) == ["failed_append_visible"]


def test_log_order_must_respect_real_time() -> None:
    """1 was acknowledged before 2 was even sent, so no log may hold 2 before 1."""
    history = H().inv(1, "append", 1).ok(1).inv(1, "append", 2).ok(1).inv(2, "read").ok(2, [2, 1])
    assert anomalies(history) == ["reordered"]


def test_a_read_showing_a_value_holds_everything_logged_before_that_value_was_appended() -> None:
    """The read began before 1 was acknowledged, but it shows 2, whose append began only after: 1 precedes 2 in
    the log, so a read holding 2 holds 1."""
    history = H().inv(3, "read").inv(1, "append", 1).ok(1).inv(1, "append", 2).ok(1).ok(3, [2])
    assert anomalies(history) == ["lost"]
    chain = H().inv(3, "read").inv(1, "append", 1).ok(1).inv(1, "append", 2).ok(1).inv(1, "append", 3).ok(1)
    result = list_append.check(chain.ok(3, [3]).ops)
    assert result["counts"] == {"lost": 2}
    assert {a["details"]["value"]: a["details"]["because_it_shows"] for a in result["anomalies"]} == {1: 3, 2: 3}
    behind = H().inv(3, "read").inv(1, "append", 1).ok(1).inv(1, "append", 2).ok(1).ok(3, [2])
    assert anomalies(behind.inv(3, "read").ok(3, [1, 2])) == ["reordered", "stale_read"]  # 1 was there all along
    concurrent = H().inv(3, "read").inv(1, "append", 1).inv(2, "append", 2).ok(2).ok(3, [2]).ok(1)
    assert anomalies(concurrent) == []  # 2 began before 1 was acknowledged: 2 may come first


def test_final_state_on_every_node() -> None:
    acknowledged = H().inv(1, "append", 1, key="s").ok(1).inv(1, "append", 2, key="s").ok(1).ops
    assert list_append.check_final(acknowledged, {"n1": {"s": [1, 2]}, "n2": {"s": [1, 2]}}) == []
    found = list_append.check_final(acknowledged, {"n1": {"s": [1, 2]}, "n2": {"s": [1]}, "n3": {}})
    assert sorted(a["kind"] for a in found) == ["lost_on_node", "lost_on_node", "replicas_differ"]
    assert {a["details"]["node"]: a["details"]["missing"] for a in found if a["kind"] == "lost_on_node"} == {
        "n2": [2],
        "n3": [1, 2],
    }
    duplicated = list_append.check_final(acknowledged, {"n1": {"s": [1, 2, 2]}})
    assert [a["kind"] for a in duplicated] == ["duplicate_on_node"]


_next_value = itertools.count(1)  # append values, unique across the whole test run


def list_op(rng: random.Random) -> tuple[str, Any]:
    return ("read", None) if rng.random() < 0.5 else ("append", next(_next_value))


def list_history(rng: random.Random, operations: int, processes: int, keys: int) -> list[Planned]:
    planned = plan(rng, operations, processes, keys, list_op)
    lists: dict[str, list[int]] = {}
    for op in sorted((op for op in planned if op.effect is not None), key=lambda op: op.effect):
        if op.f == "read":
            op.result = list(lists.get(op.key, []))
        else:
            lists.setdefault(op.key, []).append(op.value)
    return planned


def corruptions(planned: list[Planned], read: Planned) -> dict[str, list[Any]]:
    """Ways to break one read that no valid history can explain, by the anomaly each must produce."""
    options: dict[str, list[Any]] = {"phantom": [*read.result, -1]}
    if read.result:
        options["duplicate"] = [*read.result, read.result[-1]]
    acknowledged = {
        op.value for op in planned if op.f == "append" and op.outcome == "ok" and op.completed < read.invoked
    }
    dropped = [value for value in read.result if value in acknowledged]
    if dropped:
        options["lost|stale_read"] = [value for value in read.result if value != dropped[0]]
    return options


@simulated()
def test_simulated_list_histories_are_valid_and_a_corrupted_read_is_caught(
    rng: random.Random, operations: int, processes: int, keys: int
) -> None:
    planned = list_history(rng, operations, processes, keys)
    result = list_append.check(record(planned))
    assert result["valid"] is True, result["anomalies"]
    reads = [op for op in planned if op.f == "read" and op.outcome == "ok"]
    if not reads:
        return
    read = rng.choice(reads)
    for expected, corrupted in corruptions(planned, read).items():
        kinds = set(list_append.check(record(planned, read, corrupted))["counts"])
        assert kinds & set(expected.split("|")), (expected, kinds)


def test_long_list_history_is_checked_fast() -> None:
    planned = list_history(random.Random(3), 10_000, 10, 20)
    started = time.monotonic()
    result = list_append.check(record(planned))
    assert result["valid"] is True
    assert time.monotonic() - started < 5


def naive_list_anomalies(ops: list[Op]) -> set[tuple[Any, ...]]:
    """The list-append rules read by read, value by value, as the checker's docstring states them."""
    per_value: Counter[tuple[str, str, Any]] = Counter()
    per_read: set[tuple[Any, ...]] = set()
    for key, key_ops in by_key(ops).items():
        appends = {i.value: (i, c) for i, c in pairs(key_ops) if i.f == "append"}
        reads = [(i, c) for i, c in pairs(key_ops) if i.f == "read" and c.type == "ok"]
        longest = max((list(c.value) for _, c in reads), key=len, default=[])
        known_at = {value: c.index for value, (_, c) in appends.items() if c.type == "ok"}
        last_seen: dict[Any, int] = {}
        for invocation, completion in reads:
            for value, copies in Counter(completion.value).items():
                append = appends.get(value)
                if copies > 1:
                    per_value["duplicate", key, value] += 1
                if append is None or append[0].index > completion.index:
                    per_value["phantom", key, value] += 1
                elif append[1].type == "fail":
                    per_value["failed_append_visible", key, value] += 1
                else:
                    known_at[value] = min(known_at.get(value, completion.index), completion.index)
                    last_seen[value] = max(last_seen.get(value, -1), invocation.index)
            if list(completion.value) != longest[: len(completion.value)]:
                per_read.add(("reordered", key, invocation.index))
        for i, first in enumerate(longest):
            for later in longest[i + 1 :]:
                if (
                    first in appends
                    and later in appends
                    and appends[later][1].type == "ok"
                    and appends[later][1].index < appends[first][0].index
                ):
                    per_read.add(("reordered", key, "real time"))
        for invocation, completion in reads:
            # A read begins no earlier than the latest append among the (not phantom) values it shows.
            shown = [appends[v][0].index for v in completion.value if v in appends]
            began = max([invocation.index, *(index for index in shown if index < completion.index)])
            missing = [v for v, index in known_at.items() if index < began and v not in completion.value]
            stale = [v for v in missing if last_seen.get(v, -1) > completion.index]
            if stale:
                per_read.add(("stale_read", key, invocation.index, len(stale)))
            for value in set(missing) - set(stale):
                per_value["lost", key, value] += 1
    return {(*what, count) for what, count in per_value.items()} | per_read


def reported(result: dict[str, Any]) -> set[tuple[Any, ...]]:
    """The checker's anomalies in the oracle's terms."""
    found: set[tuple[Any, ...]] = set()
    for anomaly in result["anomalies"]:
        kind, key, details = anomaly["kind"], anomaly["key"], anomaly["details"]
        if kind == "stale_read":
            found.add((kind, key, details["read"]["index"], details["missing_count"]))
        elif kind == "reordered":
            found.add((kind, key, details["read"]["index"] if "read" in details else "real time"))
        else:
            found.add((kind, key, details["value"], details["reads"]))
    return found


def mangle(rng: random.Random, planned: list[Planned], read: Planned) -> list[Any]:
    """One of the ways a broken store could answer ``read``."""
    values = list(read.result)
    failed = [op.value for op in planned if op.f == "append" and op.outcome == "fail"]
    future = [op.value for op in planned if op.f == "append" and op.invoked > read.completed]
    choice = rng.randrange(7)
    spot = rng.randrange(len(values) + 1)
    if choice == 0 and values:
        del values[min(spot, len(values) - 1)]
    elif choice == 1 and values:
        values.insert(spot, rng.choice(values))
    elif choice == 2 and len(values) > 1:
        at = min(spot, len(values) - 2)
        values[at], values[at + 1] = values[at + 1], values[at]
    elif choice == 3:
        values.insert(spot, -rng.randrange(1, 4))
    elif choice == 4 and failed:
        values.insert(spot, rng.choice(failed))
    elif choice == 5 and future:
        values.append(rng.choice(future))
    else:
        values = values[:spot]
    return values


@simulated(processes=6)
def test_list_checker_agrees_with_the_naive_rules(
    rng: random.Random, operations: int, processes: int, keys: int
) -> None:
    planned = list_history(rng, operations, processes, keys)
    for op in planned:
        if op.f == "read" and op.outcome == "ok" and rng.random() < 0.3:
            op.result = mangle(rng, planned, op)
    ops = record(planned)
    assert reported(list_append.check(ops)) == naive_list_anomalies(ops)


# --------------------------------------------------------------------- chat
def _exchange(value: int, context_turns: int, read_index: int = 5, context_index: int = 5) -> list[dict[str, Any]]:
    key = f"jepsen-{value}"
    return [
        {"role": "user", "content": f"message {value}", "metadata": {"idempotency_key": key}},
        {
            "role": "assistant",
            "content": "...",
            "metadata": {
                "idempotency_key": key,
                "read_index": read_index,
                "context_index": context_index,
                "context_turns": context_turns,
            },
        },
    ]


def _two_chats_in_sequence() -> list[Op]:
    """Chat 1 acknowledged, then chat 2 begins: chat 2's reply must have seen chat 1's turns."""
    return H().inv(1, "chat", 1).ok(1, 1).inv(2, "chat", 2).ok(2, 2).ops


def test_chat_checker_accepts_fresh_exactly_once_replies() -> None:
    result = chat.check(_two_chats_in_sequence(), {"k": _exchange(1, 0) + _exchange(2, 2)})
    assert result["valid"], result


def test_chat_checker_catches_a_reply_generated_without_an_acknowledged_message() -> None:
    result = chat.check(_two_chats_in_sequence(), {"k": _exchange(1, 0) + _exchange(2, 0)})
    assert result["counts"] == {"stale_context": 1}


def test_chat_checker_catches_duplicates_unpaired_turns_and_reads_behind_the_read_index() -> None:
    ops = H().inv(1, "chat", 1).ok(1, 1).ops
    duplicated = _exchange(1, 0) + _exchange(1, 2)
    assert chat.check(ops, {"k": duplicated})["counts"] == {"duplicate_turn": 1}
    assert chat.check(ops, {"k": _exchange(1, 0)[:1]})["counts"] == {"unpaired_turn": 1}
    behind = chat.check(ops, {"k": _exchange(1, 0, read_index=9, context_index=7)})
    assert behind["counts"] == {"context_older_than_read_index": 1}


def test_chat_checker_ignores_concurrent_chats() -> None:
    """Chat 2 began before chat 1 was acknowledged: its reply may or may not have seen chat 1."""
    ops = H().inv(1, "chat", 1).inv(2, "chat", 2).ok(1, 1).ok(2, 2).ops
    assert chat.check(ops, {"k": _exchange(1, 0) + _exchange(2, 0)})["valid"]


# --------------------------------------------------------------------- final reads after healing
def final_verdict(workload: Any, history: H, *finals: Any) -> dict[str, Any]:
    """What the harness's checks say of key k's final reads (node n1's first, then n2's...) after ``history``."""
    workload.keys = ["k"]
    checks = runner._check(history.recorder, [workload], {f"n{n}": {"k": final} for n, final in enumerate(finals, 1)})
    return checks[f"{workload.name}-final"]


def test_final_register_value_is_one_the_acknowledged_writes_allow() -> None:
    """After healing, the register holds the last acknowledged write's value, or one written concurrently with it
    or after it: never an older one, even if every replica agrees on it."""
    sequential = H().inv(1, "write", 1).ok(1).inv(1, "write", 2).ok(1)
    assert final_verdict(RegisterWorkload(), sequential, 2, 2, 2) == {"valid": True, "anomalies": []}
    lost = final_verdict(RegisterWorkload(), sequential, 1, 1, 1)
    assert lost["valid"] is False  # 2 was acknowledged, and began after 1 was: it is lost on every node
    (anomaly,) = lost["anomalies"]
    assert (anomaly["kind"], anomaly["key"]) == ("impossible_final", "k")
    details = anomaly["details"]
    assert (details["value"], details["nodes"], details["reason"]) == (1, ["n1", "n2", "n3"], "superseded")
    assert (details["possible"], details["last_acknowledged"]["value"]) == ([2], 2)
    never = final_verdict(RegisterWorkload(), sequential, 9)
    assert never["anomalies"][0]["details"]["reason"] == "never written"
    concurrent = H().inv(1, "write", 1).inv(2, "write", 2).ok(1).ok(2)
    assert final_verdict(RegisterWorkload(), concurrent, 1)["valid"] is True
    assert final_verdict(RegisterWorkload(), concurrent, 2)["valid"] is True
    unsure = H().inv(1, "write", 1).ok(1).inv(2, "write", 3).info(2).inv(1, "write", 2).ok(1).inv(3, "write", 4)
    unsure.fail(3)
    assert final_verdict(RegisterWorkload(), unsure, 3)["valid"] is True  # it may have taken effect after 2
    assert final_verdict(RegisterWorkload(), unsure, 4)["valid"] is False  # certainly never applied
    assert final_verdict(RegisterWorkload(), unsure, 1)["valid"] is False
    cas = H().inv(1, "write", 1).ok(1).inv(1, "cas", [1, 5]).ok(1)
    assert final_verdict(RegisterWorkload(), cas, 5)["valid"] is True
    assert final_verdict(RegisterWorkload(), cas, 1)["valid"] is False
    assert final_verdict(RegisterWorkload(), H(), None)["valid"] is True  # never written: absent
    only_info = H().inv(1, "write", 1).info(1)
    assert final_verdict(RegisterWorkload(), only_info, None, 1)["anomalies"][0]["kind"] == "replicas_differ"
    assert final_verdict(RegisterWorkload(), only_info, 1)["valid"] is True
    assert final_verdict(RegisterWorkload(), only_info, None)["valid"] is True


def test_final_lists_keep_the_real_time_order_of_acknowledged_appends() -> None:
    """1 was acknowledged before 2 was sent, so every node must hold 1 before 2, even if all agree otherwise."""
    history = H().inv(1, "append", 1).ok(1).inv(1, "append", 2).ok(1)
    assert final_verdict(ListAppendWorkload(), history, [1, 2], [1, 2]) == {"valid": True, "anomalies": []}
    assert final_verdict(ListAppendWorkload(), history, [2, 1], [2, 1])["valid"] is False
    swapped = final_verdict(ListAppendWorkload(), history, [1, 2], [2, 1])["anomalies"]
    assert [a["kind"] for a in swapped] == ["reordered_on_node", "replicas_differ"]
    assert {k: swapped[0]["details"][k] for k in ("node", "before", "after")} == {"node": "n2", "before": 2, "after": 1}
    concurrent = H().inv(1, "append", 1).inv(2, "append", 2).ok(1).ok(2)
    assert final_verdict(ListAppendWorkload(), concurrent, [2, 1])["valid"] is True
    late = H().inv(1, "append", 1).info(1).inv(2, "append", 2).ok(2)
    assert final_verdict(ListAppendWorkload(), late, [2, 1])["valid"] is True  # 1 took effect after its timeout
