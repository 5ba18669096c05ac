"""The checkers on hand-made histories: they must accept every valid one and catch every broken one."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like.checkers import linearizability, list_append
from jepsen_like.history import Op, Recorder, pairs


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


def linearizable(history: H) -> Any:
    return linearizability.check(history.ops, time_budget=5)["valid"]


# --------------------------------------------------------------------- register
def test_sequential_history_is_linearizable() -> None:
    assert linearizable(H().inv(1, "write", 1).ok(1).inv(1, "read").ok(1, 1).inv(2, "cas", [1, 2]).ok(2)
                        .inv(2, "read").ok(2, 2)) is True


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
    history = (H().inv(1, "write", 0).ok(1)
               .inv(1, "write", 1)
               .inv(2, "read").ok(2, 1)
               .inv(3, "read").ok(3, 0)
               .ok(1))
    assert linearizable(history) is False


def test_info_write_may_or_may_not_have_happened() -> None:
    happened = H().inv(1, "write", 1).ok(1).inv(2, "write", 2).info(2).inv(3, "read").ok(3, 2)
    did_not = H().inv(1, "write", 1).ok(1).inv(2, "write", 2).info(2).inv(3, "read").ok(3, 1)
    assert linearizable(happened) is True
    assert linearizable(did_not) is True
    # It cannot take effect before it was invoked.
    assert linearizable(H().inv(3, "read").ok(3, 2).inv(2, "write", 2).info(2)) is False


def test_failed_write_never_happened() -> None:
    history = H().inv(1, "write", 1).ok(1).inv(2, "write", 2).fail(2).inv(3, "read").ok(3, 2)
    assert linearizable(history) is False


def test_cas_chains() -> None:
    good = (H().inv(1, "write", 0).ok(1).inv(1, "cas", [0, 1]).ok(1).inv(2, "cas", [0, 2]).fail(2)
            .inv(2, "cas", [1, 2]).ok(2).inv(3, "read").ok(3, 2))
    assert linearizable(good) is True
    bad = H().inv(1, "write", 0).ok(1).inv(1, "cas", [5, 1]).ok(1)  # succeeded against the wrong value
    assert linearizable(bad) is False
    concurrent = (H().inv(1, "write", 0).ok(1).inv(1, "cas", [0, 1]).inv(2, "cas", [0, 2]).ok(2).ok(1))
    assert linearizable(concurrent) is False  # both cannot have seen 0


def test_keys_are_checked_independently() -> None:
    history = (H().inv(1, "write", 1, key="a").inv(2, "write", 1, key="b").ok(1).ok(2)
               .inv(1, "read", key="a").ok(1, 1).inv(2, "read", key="b").ok(2, 1))
    result = linearizability.check(history.ops)
    assert result["valid"] is True and result["keys"] == {"a": "ok", "b": "ok"}
    broken = H().inv(1, "write", 1, key="a").ok(1).inv(2, "read", key="b").ok(2, 1)
    result = linearizability.check(broken.ops)
    assert result["keys"] == {"a": "ok", "b": "violation"}
    assert result["anomalies"][0]["cannot_linearize"]["output"] == 1


def test_budget_exhaustion_is_unknown_not_a_verdict() -> None:
    history = H()
    for process in range(1, 41):
        history.inv(process, "write", process % 5).info(process)
    for process in range(41, 61):
        history.inv(process, "read").ok(process, 7)  # never written: the search must explore every subset
    result = linearizability.check(history.ops, time_budget=0.0)
    assert result["valid"] == "unknown" and result["anomalies"] == []


def _concurrent_register_history(rng: random.Random, operations: int, corrupt: bool) -> list[Op]:
    """Run a real register, then widen each op's window without reordering non-overlapping ops."""
    state: int | None = None
    performed = []
    for _ in range(operations):
        f = rng.choice(["read", "write", "cas"])
        if f == "read":
            performed.append(("read", None, state))
        elif f == "write":
            state = rng.randrange(4)
            performed.append(("write", state, None))
        else:
            expected, new = rng.randrange(4), rng.randrange(4)
            applied = state == expected
            if applied:
                state = new
            performed.append(("cas", [expected, new], applied))
    if corrupt:
        reads = [i for i, p in enumerate(performed) if p[0] == "read"]
        if not reads:
            performed.append(("read", None, 99))
        else:
            performed[rng.choice(reads)] = ("read", None, 99)
    # Linearization point i; invoke slightly before, complete slightly after, overlapping neighbours.
    events = []
    for i, (f, value, result) in enumerate(performed):
        start = i - rng.random() * 1.5
        end = i + rng.random() * 1.5
        events.append((start, "invoke", i, f, value, result))
        events.append((end, "complete", i, f, value, result))
    events.sort(key=lambda e: e[0])
    history = H()
    for _, kind, i, f, value, result in events:
        if kind == "invoke":
            history.inv(i, f, value)
        elif f == "read":
            history.ok(i, result)
        elif f == "cas" and not result:
            history.fail(i)
        else:
            history.ok(i)
    return history.ops


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 30))
def test_real_register_histories_are_linearizable_and_corruptions_are_caught(seed: int, n: int) -> None:
    rng = random.Random(seed)
    assert linearizability.check(_concurrent_register_history(rng, n, corrupt=False))["valid"] is True
    rng = random.Random(seed)
    assert linearizability.check(_concurrent_register_history(rng, n, corrupt=True))["valid"] is False


# --------------------------------------------------------------------- list append
def anomalies(history: H) -> list[str]:
    return sorted(a["kind"] for a in list_append.check(history.ops)["anomalies"])


def test_valid_concurrent_appends_and_reads() -> None:
    history = (H().inv(1, "append", 1).inv(2, "append", 2).inv(3, "read").ok(3, [2]).ok(1).ok(2)
               .inv(3, "read").ok(3, [2, 1]).inv(1, "append", 3).info(1).inv(3, "read").ok(3, [2, 1, 3]))
    assert anomalies(history) == []


def test_lost_and_stale_appends() -> None:
    lost = H().inv(1, "append", 1).ok(1).inv(2, "read").ok(2, [])
    assert anomalies(lost) == ["lost"]
    stale = H().inv(1, "append", 1).ok(1).inv(2, "read").ok(2, []).inv(2, "read").ok(2, [1])
    assert anomalies(stale) == ["stale_read"]
    shrinking = (H().inv(1, "append", 1).inv(2, "read").ok(2, [1]).inv(3, "read").ok(3, []).info(1))
    assert anomalies(shrinking) == ["stale_read"]


def test_duplicates_reorders_and_phantoms() -> None:
    assert anomalies(H().inv(1, "append", 1).ok(1).inv(2, "read").ok(2, [1, 1])) == ["duplicate"]
    reordered = (H().inv(1, "append", 1).inv(2, "append", 2).ok(1).ok(2)
                 .inv(3, "read").ok(3, [1, 2]).inv(3, "read").ok(3, [2, 1]))
    assert "reordered" in anomalies(reordered)
    assert anomalies(H().inv(2, "read").ok(2, [7])) == ["phantom"]
    assert anomalies(H().inv(1, "append", 1).fail(1).inv(2, "read").ok(2, [1])) == ["failed_append_visible"]


def test_final_state_on_every_node() -> None:
    acknowledged = {"s": [1, 2]}
    assert list_append.check_final(acknowledged, {"n1": {"s": [1, 2]}, "n2": {"s": [1, 2]}}) == []
    kinds = {a["kind"] for a in list_append.check_final(acknowledged, {"n1": {"s": [1, 2]}, "n2": {"s": [1]}})}
    assert kinds == {"lost_on_node", "replicas_differ"}


def test_pairs_handles_clients_that_never_completed() -> None:
    history = H().inv(1, "write", 1)
    (invocation, completion), = pairs(history.ops)
    assert completion.type == "info" and completion.time == float("inf")
