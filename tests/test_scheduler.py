"""Scheduler properties: shares follow weights, affinity sticks and sheds, dead nodes and domains."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpdb.inference.placement import (
    NoWorkerAvailable,
    Policy,
    Request,
    SchedulerState,
    Worker,
    choose,
    forget_node,
)

node_ids = st.sampled_from(["n1", "n2", "n3", "n4", "n5"])


@st.composite
def worker_sets(draw: st.DrawFn, min_size: int = 1) -> list[Worker]:
    ids = draw(st.lists(node_ids, min_size=min_size, max_size=5, unique=True))
    return [
        Worker(
            node_id=i,
            weight=draw(st.integers(1, 10)),
            slots=draw(st.integers(1, 4)),
            domains=frozenset(draw(st.lists(st.sampled_from(["law", "code", "med"]), max_size=2))),
            in_flight=draw(st.integers(0, 6)),
            queued=draw(st.integers(0, 3)),
            alive=draw(st.booleans()),
        )
        for i in ids
    ]


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 10), min_size=1, max_size=5))
def test_weighted_shares_are_within_ten_percent_of_the_weights_over_1000_picks(weights: list[int]) -> None:
    workers = [Worker(node_id=f"n{i}", weight=w) for i, w in enumerate(weights)]
    state = SchedulerState()
    picks = Counter(choose(Policy.weighted, Request(), workers, state).node_id for _ in range(1000))
    total = sum(weights)
    for worker in workers:
        expected = 1000 * worker.weight / total
        assert abs(picks[worker.node_id] - expected) <= 0.1 * expected + 1


@settings(max_examples=200, deadline=None)
@given(
    workers=worker_sets(),
    policy=st.sampled_from(list(Policy)),
    sessions=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=30),
)
def test_a_dead_node_is_never_picked(workers: list[Worker], policy: Policy, sessions: list[str | None]) -> None:
    state = SchedulerState()
    alive = {w.node_id for w in workers if w.alive}
    for session in sessions:
        if not alive:
            with pytest.raises(NoWorkerAvailable):
                choose(policy, Request(session_key=session), workers, state)
            continue
        assert choose(policy, Request(session_key=session), workers, state).node_id in alive


@settings(max_examples=200, deadline=None)
@given(workers=worker_sets(), policy=st.sampled_from(list(Policy)), domain=st.sampled_from(["law", "code", "med"]))
def test_the_domain_filter_is_honoured_while_a_specialised_node_is_alive(
    workers: list[Worker], policy: Policy, domain: str
) -> None:
    state = SchedulerState()
    alive = [w for w in workers if w.alive]
    specialised = {w.node_id for w in alive if domain in w.domains}
    for _ in range(10):
        if not alive:
            with pytest.raises(NoWorkerAvailable):
                choose(policy, Request(domain=domain), workers, state)
            return
        decision = choose(policy, Request(domain=domain), workers, state)
        if specialised:
            assert decision.node_id in specialised and decision.domain_matched
        else:
            assert not decision.domain_matched


@settings(max_examples=100, deadline=None)
@given(workers=worker_sets(min_size=2), turns=st.integers(2, 20))
def test_affinity_sticks_to_the_first_node_while_load_is_balanced(workers: list[Worker], turns: int) -> None:
    balanced = [Worker(node_id=w.node_id, weight=w.weight, slots=w.slots, in_flight=0, queued=0) for w in workers]
    state = SchedulerState()
    first = choose(Policy.affinity, Request(session_key="s"), balanced, state)
    for _ in range(turns):
        decision = choose(Policy.affinity, Request(session_key="s"), balanced, state)
        assert decision.node_id == first.node_id and decision.reason == "affinity"


@settings(max_examples=100, deadline=None)
@given(workers=worker_sets(min_size=2), overload=st.integers(2, 20), threshold=st.sampled_from([0.5, 1.0, 2.0]))
def test_affinity_sheds_an_overloaded_holder_to_a_less_loaded_node(
    workers: list[Worker], overload: int, threshold: float
) -> None:
    idle = [Worker(node_id=w.node_id, weight=w.weight, slots=1) for w in workers]
    state = SchedulerState()
    holder = choose(Policy.affinity, Request(session_key="s"), idle, state).node_id
    loaded = [
        Worker(
            node_id=w.node_id,
            weight=w.weight,
            slots=1,
            in_flight=int(threshold) + overload if w.node_id == holder else 0,
        )
        for w in idle
    ]
    decision = choose(Policy.affinity, Request(session_key="s"), loaded, state)
    assert decision.node_id != holder and decision.reason == "spare_capacity"
    # The session now lives on its new node.
    again = choose(Policy.affinity, Request(session_key="s"), loaded, state)
    assert again.node_id == decision.node_id and again.reason == "affinity"


def test_new_sessions_spread_by_weight_under_affinity() -> None:
    workers = [Worker(node_id="small", weight=1.0), Worker(node_id="big", weight=2.0)]
    state = SchedulerState()
    picks = Counter(choose(Policy.affinity, Request(session_key=f"s{i}"), workers, state).node_id for i in range(300))
    assert picks == {"small": 100, "big": 200}


def test_round_robin_cycles_in_id_order() -> None:
    workers = [Worker(node_id=n, weight=w) for n, w in (("b", 5.0), ("a", 1.0), ("c", 1.0))]
    state = SchedulerState()
    assert [choose(Policy.round_robin, Request(), workers, state).node_id for _ in range(6)] == list("abcabc")


def test_least_connections_picks_the_least_busy_slot() -> None:
    workers = [
        Worker(node_id="a", weight=1.0, slots=1, in_flight=1),
        Worker(node_id="b", weight=1.0, slots=4, in_flight=2),
        Worker(node_id="c", weight=1.0, slots=1, in_flight=1, queued=1),
    ]
    assert choose(Policy.least_connections, Request(), workers, SchedulerState()).node_id == "b"


def test_forgetting_a_node_drops_its_sessions() -> None:
    workers = [Worker(node_id="a", weight=1.0), Worker(node_id="b", weight=1.0)]
    state = SchedulerState()
    holder = choose(Policy.affinity, Request(session_key="s"), workers, state).node_id
    forget_node(state, holder)
    assert "s" not in state.affinity
