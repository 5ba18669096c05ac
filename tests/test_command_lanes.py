"""``CommandLanes``: a leader's proposals, small ones at once, bulk ones an entry at a time; and, on
three in-process voters, a small write that no longer waits behind every bulk batch pending."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpdb.errors import NotApplied
from mcpdb.raft import command_lanes
from mcpdb.raft.command_lanes import BULK_BYTES, HELD_BULK_BEFORE_MEASURED, MIN_HELD_BULK, CommandLanes
from mcpdb.raft.replication import Replication
from mcpdb.store.commands import Batch, BatchPut, Put, namespace_in
from mcpdb.store.state_machine import ContextStore
from tests.raft_helpers import before_applies, in_process_cluster, slow_applies, slow_preparations, wait_until


def _bulk(namespace: str) -> bytes:
    """A bulk command's bytes as the lanes see them: ``namespace_in`` reads its first ones."""
    return b'{"v":1,"ns":"' + namespace.encode() + b'","ops":[' + b" " * BULK_BYTES


SMALL, BULK = b"s" * 100, _bulk("a")


def _never(callback: Any) -> None:
    raise AssertionError(f"{callback} refused")


TIMEOUT_S = 30.0
BOUND, SHARE = HELD_BULK_BEFORE_MEASURED, HELD_BULK_BEFORE_MEASURED // 2  # before a cycle is measured
SMALL_BOUND, SMALL_SHARE = 4, 2  # in the property test
WAIT_BUDGET_S = 1.5


class _Leader:
    """What a RaftNode gives the lanes: whether its last bulk entry is unapplied, what to do on a take
    and a refusal, and a clock the test moves."""

    def __init__(self, refusals: bool = False) -> None:
        self.unapplied_bulk = False
        self.took = 0
        self.now = 0.0  # the lanes' clock: a take measures the time since the one before
        self.refused: list[Any] = []  # callbacks of held proposals refused for waiting too long
        self.refuse = self.refused.append if refusals else _never  # no test refuses without saying so

    def took_bulk(self) -> None:
        self.took += 1
        self.unapplied_bulk = True

    def lanes(self, max_size: int = 0) -> CommandLanes:
        return CommandLanes(
            max_size,
            lambda: True,
            lambda: self.unapplied_bulk,
            self.took_bulk,
            self.refuse,
            namespace_in,
            WAIT_BUDGET_S,
            lambda: self.now,
        )


def _drain(lanes: CommandLanes) -> list[Any]:
    taken = []
    while True:
        try:
            taken.append(lanes.get_nowait()[1])
        except queue.Empty:
            return taken


def test_small_proposals_pass_held_bulk_ones_and_one_bulk_goes_per_applied_bulk_entry() -> None:
    leader = _Leader()
    lanes = leader.lanes()
    for name, command in [("b1", BULK), ("b2", BULK), ("s1", SMALL), ("b3", BULK), ("s2", SMALL)]:
        lanes.put_nowait((command, name))
    assert _drain(lanes) == ["s1", "s2", "b1"] and leader.took == 1
    assert not lanes.has_ready() and lanes.held_bulk() == 2
    lanes.put_nowait((SMALL, "s3"))
    assert lanes.has_ready() and _drain(lanes) == ["s3"]
    leader.unapplied_bulk = False  # b1 applied
    assert lanes.has_ready() and _drain(lanes) == ["b2"]
    leader.unapplied_bulk = False
    assert _drain(lanes) == ["b3"] and lanes.held_bulk() == 0 and not lanes.has_ready()


def test_a_full_queue_refuses_as_pysyncobjs_does() -> None:
    lanes = _Leader().lanes(max_size=2)
    lanes.put_nowait((SMALL, 1))
    lanes.put_nowait((BULK, 2))
    with pytest.raises(queue.Full):
        lanes.put_nowait((SMALL, 3))


def test_a_leader_holding_bulk_refuses_past_the_bound_and_small_ones_still_pass() -> None:
    leader = _Leader()
    leader.unapplied_bulk = True  # a bulk entry appended and not yet applied: the rest are held
    lanes = leader.lanes()
    for number in range(BOUND):
        lanes.put_nowait((_bulk(f"ns{number % 2}"), number))
    with pytest.raises(queue.Full):
        lanes.put_nowait((_bulk("ns2"), "one too many"))
    lanes.put_nowait((SMALL, "small"))
    assert _drain(lanes) == ["small"]
    leader.unapplied_bulk = False
    assert _drain(lanes) == [0]
    lanes.put_nowait((_bulk("ns0"), "room again"))  # one was taken


def test_one_namespace_holds_at_most_its_share_and_namespaces_are_taken_in_turn() -> None:
    """A tenant whose loaders keep sending batches neither fills the bulk lane nor goes first in it."""
    leader = _Leader()
    leader.unapplied_bulk = True
    lanes = leader.lanes()
    for number in range(SHARE):
        lanes.put_nowait((_bulk("hog"), ("hog", number)))
    with pytest.raises(queue.Full):
        lanes.put_nowait((_bulk("hog"), ("hog", "past its share")))
    lanes.put_nowait((_bulk("other"), ("other", 0)))
    lanes.put_nowait((_bulk("other"), ("other", 1)))
    lanes.put_nowait((SMALL + b'"ns":"hog"', ("small", 0)))  # small ones are not counted against a share
    taken = _drain(lanes)
    while lanes.held_bulk():
        leader.unapplied_bulk = False
        taken += _drain(lanes)
    assert taken == [("small", 0), ("hog", 0), ("other", 0), ("hog", 1), ("other", 1), ("hog", 2), ("hog", 3)]


@pytest.mark.parametrize(("cycle_s", "bound"), [(0.01, 64), (0.11, 13), (0.29, 5), (2.0, MIN_HELD_BULK)])
def test_a_leader_holds_as_many_bulk_proposals_as_it_applies_in_half_the_timeout(cycle_s: float, bound: int) -> None:
    """Measured from one bulk take to the next while more were held: an empty store's short cycles let
    a loader's many batches wait, a saturated store's long ones refuse past what finishes in time."""
    leader = _Leader()
    lanes = leader.lanes()
    for number in range(MIN_HELD_BULK):
        lanes.put_nowait((_bulk(f"ns{number}"), number))
    for number in range(30):  # the estimate follows the cycles in a few batches
        leader.unapplied_bulk = False
        _drain(lanes)
        leader.now += cycle_s
        lanes.put_nowait((_bulk(f"again{number}"), number))
    assert lanes.held_bound() == bound
    held = lanes.held_bulk()
    for number in range(bound - held):
        lanes.put_nowait((_bulk(f"more{number}"), number))
    with pytest.raises(queue.Full):
        lanes.put_nowait((_bulk("one-too-many"), "refused"))


def test_idle_gaps_and_a_followers_forwarding_are_not_cycles() -> None:
    """A take after the lane ran empty measures the wait for work, one after an election the time as a
    follower, and a follower forwards its bulk proposals at once: none says how long a bulk entry takes."""
    leader = _Leader()
    lanes = leader.lanes()
    for _ in range(5):
        lanes.put_nowait((BULK, "alone"))
        leader.unapplied_bulk = False
        _drain(lanes)
        leader.now += 100.0
    assert lanes.held_bound() == BOUND
    lanes.put_nowait((BULK, "first"))
    lanes.put_nowait((BULK, "held"))
    leader.unapplied_bulk = False
    assert _drain(lanes) == ["first"]  # "held" waits: its take would measure a cycle
    lanes.role_changed()  # ... but this node lost and won an election meanwhile
    leader.now += WAIT_BUDGET_S / 2  # as a cycle this would bring the bound down to 2
    leader.unapplied_bulk = False
    assert _drain(lanes) == ["held"]
    assert lanes.held_bound() == BOUND
    follower = CommandLanes(0, lambda: False, lambda: False, lambda: None, _never, namespace_in, WAIT_BUDGET_S)
    for number in range(5):
        follower.put_nowait((BULK, number))
    _drain(follower)
    assert follower.held_bound() == BOUND


def test_a_held_proposal_that_waited_past_the_budget_is_refused_not_appended() -> None:
    """It would likely outwait the request timeout once appended and be answered "may or may not be
    applied"; refused, it is certainly not applied. It is refused at the next look at the queue even
    while a bulk entry is still being applied (a stall), and a follower forwards it whatever its age."""
    leader = _Leader(refusals=True)
    lanes = leader.lanes()
    leader.unapplied_bulk = True  # a bulk entry appended and not applied: a stall from here on
    lanes.put_nowait((_bulk("a"), "old"))
    leader.now += WAIT_BUDGET_S / 2
    lanes.put_nowait((_bulk("b"), "younger"))
    lanes.put_nowait((_bulk("a"), "young"))
    assert _drain(lanes) == [] and leader.refused == []  # nothing refused before its time
    leader.now += WAIT_BUDGET_S / 2 + 0.01
    assert _drain(lanes) == [] and leader.refused == ["old"] and lanes.held_bulk() == 2
    leader.unapplied_bulk = False
    assert _drain(lanes) == ["young"] and lanes.held_bulk() == 1  # namespace a's turn: it came first
    leader.now += WAIT_BUDGET_S
    assert _drain(lanes) == [] and leader.refused == ["old", "younger"] and lanes.held_bulk() == 0
    clock = [0.0]
    follower = CommandLanes(
        0, lambda: False, lambda: False, lambda: None, _never, namespace_in, WAIT_BUDGET_S, lambda: clock[0]
    )
    follower.put_nowait((BULK, "forwarded"))
    clock[0] += 10 * WAIT_BUDGET_S
    assert _drain(follower) == ["forwarded"]


def test_a_stall_counts_as_at_most_twice_the_budget_and_a_lane_emptied_by_refusals_measures_nothing() -> None:
    leader = _Leader(refusals=True)
    lanes = leader.lanes()
    lanes.put_nowait((_bulk("a"), "first"))
    lanes.put_nowait((_bulk("b"), "second"))
    lanes.put_nowait((_bulk("c"), "third"))
    assert _drain(lanes) == ["first"]
    leader.now += WAIT_BUDGET_S / 3
    leader.unapplied_bulk = False
    assert _drain(lanes) == ["second"]  # one cycle of a third of the budget: the bound is 3
    assert lanes.held_bound() == 3
    leader.now += 100.0  # a stall: "third" is refused, and the lane is empty
    assert _drain(lanes) == [] and leader.refused == ["third"]
    leader.now += 100.0  # an idle gap
    lanes.put_nowait((_bulk("d"), "fourth"))
    lanes.put_nowait((_bulk("e"), "fifth"))
    leader.unapplied_bulk = False
    assert _drain(lanes) == ["fourth"] and lanes.held_bound() == 3  # the gap measured nothing
    leader.now += 100.0
    leader.unapplied_bulk = False
    lanes.put_nowait((_bulk("f"), "sixth"))  # "fifth" is refused at this look; "sixth" is taken
    assert _drain(lanes) == ["sixth"] and leader.refused == ["third", "fifth"]
    # A cycle of 100 s (a stall with "fifth" held) counted as 3 s, twice the budget: 0.5 + 0.2 * (3 - 0.5).
    assert lanes._cycle_s == pytest.approx(1.0)


def test_commands_of_no_namespace_share_one_key() -> None:
    leader = _Leader()
    leader.unapplied_bulk = True
    lanes = leader.lanes()
    for number in range(SHARE):
        lanes.put_nowait((b"b" * BULK_BYTES, number))
    with pytest.raises(queue.Full):
        lanes.put_nowait((b"e" * BULK_BYTES, "past the share of no namespace"))


def test_a_node_holding_nothing_takes_any_number_of_bulk_proposals() -> None:
    """A follower forwards its bulk proposals at its next tick, however many came while it applied."""
    lanes = CommandLanes(0, lambda: False, lambda: False, lambda: None, _never, namespace_in, WAIT_BUDGET_S)
    for number in range(3 * BOUND):
        lanes.put_nowait((BULK, number))
    assert _drain(lanes) == list(range(3 * BOUND))


LANES = ["small", "a", "b", "c"]  # a small proposal, or a bulk one of namespace a, b or c


@given(st.lists(st.tuples(st.sampled_from(LANES), st.booleans()), max_size=60))
@settings(max_examples=300)
def test_nothing_is_lost_or_reordered_within_a_lane(steps: list[tuple[str, bool]]) -> None:
    """Each step puts a small proposal or a bulk one of a namespace (refused past the held bound or the
    namespace's share, both lowered so that they are reached), then applies the bulk entry or not, then
    drains what is ready; at the end everything put is drained once, each lane in the order it came."""
    leader = _Leader()
    lanes = leader.lanes()
    taken: list[tuple[str, int]] = []
    refused: set[int] = set()
    with (  # the clock stands still: a measured cycle of 0 holds the most, here as many as before
        patch.object(command_lanes, "HELD_BULK_BEFORE_MEASURED", SMALL_BOUND),
        patch.object(command_lanes, "MAX_HELD_BULK", SMALL_BOUND),
    ):
        for number, (lane, applied) in enumerate(steps):
            held = {key: len(items) for key, items in lanes._bulk.items()}
            command = SMALL if lane == "small" else _bulk(lane)
            if lane != "small" and (lanes.held_bulk() == SMALL_BOUND or held.get(lane) == SMALL_SHARE):
                with pytest.raises(queue.Full):
                    lanes.put_nowait((command, (lane, number)))
                refused.add(number)
            else:
                lanes.put_nowait((command, (lane, number)))
            assert lanes.held_bulk() <= SMALL_BOUND and all(count <= SMALL_SHARE for count in held.values())
            if applied:
                leader.unapplied_bulk = False
            taken += _drain(lanes)
            assert leader.took == sum(1 for lane, _ in taken if lane != "small")
    while lanes.held_bulk():
        leader.unapplied_bulk = False
        taken += _drain(lanes)
    for lane in LANES:
        put = [number for number, (name, _) in enumerate(steps) if name == lane and number not in refused]
        assert [number for name, number in taken if name == lane] == put


APPLY_S = 0.3  # each bulk entry's apply


def _batch(name: str, namespace: str = "ns") -> Batch:
    """About 110 KB of commands: a bulk proposal."""
    puts = tuple(BatchPut(f"{name}-{j}", {"kind": "memory", "facts": ["x" * 1000]}, None, None) for j in range(100))
    return Batch(namespace, puts, 1.0)


@pytest.fixture
def slow_bulk_voters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[tuple[Replication, ContextStore]]]:
    """Three in-process voters whose stores take ``APPLY_S`` to apply a batch; the leader first."""
    with in_process_cluster(tmp_path, request_timeout=TIMEOUT_S) as voters:
        slow_applies(voters, monkeypatch, APPLY_S, lambda command: isinstance(command, Batch))
        yield voters


def test_a_small_write_waits_for_one_bulk_entry_not_for_all_pending(
    slow_bulk_voters: list[tuple[Replication, ContextStore]],
) -> None:
    """Three bulk batches proposed at once, then one small write: appended as they came, the write would
    follow all three (1 s); it follows the first."""
    leader = slow_bulk_voters[0][0]

    async def bulk_then_small() -> tuple[list[int], int]:
        bulk = [asyncio.create_task(leader.propose(_batch(f"c{i}"), TIMEOUT_S)) for i in range(3)]
        # The first appended, two held (three held would mean none taken yet: the write would go first).
        deadline = time.monotonic() + TIMEOUT_S
        while leader._raft.status()["bulk_proposals_held"] != 2 or leader._raft._bulk_index == 0:
            assert time.monotonic() < deadline, "the leader never held two batches behind the first"
            await asyncio.sleep(0.01)
        small = await leader.propose(Put("ns", "probe", {"kind": "memory", "facts": ["y"]}, None, None, 1.0), TIMEOUT_S)
        return [result["version"] for result in await asyncio.gather(*bulk)], small["version"]

    bulk_versions, small_version = asyncio.run(bulk_then_small())
    assert sorted(bulk_versions)[0] < small_version < sorted(bulk_versions)[1], (bulk_versions, small_version)
    assert leader._raft.status()["bulk_proposals_held"] == 0


def test_a_small_write_committed_with_the_next_bulk_entry_is_answered_before_its_apply(
    slow_bulk_voters: list[tuple[Replication, ContextStore]],
) -> None:
    """The small write and the held bulk entry are appended in the tick that applied the first bulk
    entry, and committed together: the write is answered before the second bulk entry is applied."""
    leader = slow_bulk_voters[0][0]
    answered: dict[str, float] = {}

    async def timed(name: str, command: Any) -> None:
        await leader.propose(command, TIMEOUT_S)
        answered[name] = time.monotonic()

    async def bulk_small_bulk() -> None:
        first = asyncio.create_task(timed("first", _batch("a")))
        await asyncio.sleep(0.05)  # the first batch appended and being applied; the second held behind it
        second = asyncio.create_task(timed("second", _batch("b")))
        await asyncio.sleep(0.05)
        small = Put("ns", "probe", {"kind": "memory", "facts": ["y"]}, None, None, 1.0)
        await asyncio.gather(first, second, timed("small", small))

    asyncio.run(bulk_small_bulk())
    assert answered["first"] < answered["small"] < answered["second"] - APPLY_S / 2, answered


def test_a_bulk_take_whose_append_failed_holds_nothing_back(tmp_path: Path) -> None:
    """The lanes note the index a bulk proposal will take before pysyncobj appends it; a full journal
    can then refuse the append, leaving no entry there to wait for."""
    with in_process_cluster(tmp_path) as voters:
        raft = voters[0][0]._raft
        raft._bulk_index = raft._SyncObj__getCurrentLogIndex() + 1  # as the take leaves it after such a refusal
        assert not raft._holds_bulk()
        raft._bulk_index -= 1  # an entry there, applied
        assert not raft._holds_bulk()


def test_bulk_past_the_bound_is_refused_as_not_applied_and_never_applies(
    slow_bulk_voters: list[tuple[Replication, ContextStore]],
) -> None:
    """``HELD_BULK_BEFORE_MEASURED`` + 6 batches at once, half through a follower (forwarded to the leader, refused
    there): the leader appends one at a time and holds at most the bound; those past it are refused,
    and a refused one is certainly not applied."""
    (leader, store), (follower, _) = slow_bulk_voters[0], slow_bulk_voters[1]
    count = BOUND + 6

    async def all_at_once() -> list[Any]:
        proposals = [(leader if i % 2 else follower).propose(_batch(f"b{i}"), TIMEOUT_S) for i in range(count)]
        return await asyncio.gather(*proposals, return_exceptions=True)

    outcomes = asyncio.run(all_at_once())
    refused = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NotApplied)]
    assert all(isinstance(outcome, dict | NotApplied) for outcome in outcomes), outcomes
    assert refused and "bulk batches is full" in str(outcomes[refused[0]]), outcomes
    last = max(outcome["version"] for outcome in outcomes if isinstance(outcome, dict))
    wait_until(lambda: store.applied_index() >= last, "the leader did not apply what its followers did")
    for i in range(count):
        assert (store.get("ns", f"b{i}-99") is None) == (i in refused)


def test_a_tenant_sending_batches_without_pause_leaves_room_and_turns_to_another(
    slow_bulk_voters: list[tuple[Replication, ContextStore]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One namespace's ``HELD_BULK_BEFORE_MEASURED`` + 2 batches at once, half through a follower, then
    another namespace's half of that bound: the first holds only its share (the rest refused, safe to
    retry), every batch of the second is taken, and the two take turns."""
    leader, follower = slow_bulk_voters[0][0], slow_bulk_voters[1][0]
    applied: list[str] = []

    def note_batch(number: int, command: Any) -> None:
        if number == 0 and isinstance(command, Batch):
            applied.append(command.ns)

    before_applies(slow_bulk_voters, monkeypatch, note_batch)
    monkeypatch.setattr(command_lanes, "MAX_HELD_BULK", BOUND)  # measured cycles hold no more than at first

    async def hog_then_other() -> tuple[list[Any], list[Any]]:
        hog = [
            asyncio.create_task((leader if i % 2 else follower).propose(_batch(f"h{i}", "hog"), TIMEOUT_S))
            for i in range(BOUND + 2)
        ]
        deadline = time.monotonic() + TIMEOUT_S
        while leader._raft.status()["bulk_proposals_held"] < SHARE - 1:  # the hog's share held, or all but one
            assert time.monotonic() < deadline, "the leader never held the hog's batches"
            await asyncio.sleep(0.01)
        other = [asyncio.create_task(leader.propose(_batch(f"o{i}", "other"), TIMEOUT_S)) for i in range(SHARE)]
        return (
            await asyncio.gather(*hog, return_exceptions=True),
            await asyncio.gather(*other, return_exceptions=True),
        )

    hog, other = asyncio.run(hog_then_other())
    assert all(isinstance(outcome, dict) for outcome in other), other
    assert all(isinstance(outcome, dict | NotApplied) for outcome in hog), hog
    # Its share held and one appended (one fewer if all came before the leader took the first; one more
    # if a forwarded batch came after the first apply).
    accepted = sum(isinstance(outcome, dict) for outcome in hog)
    assert SHARE <= accepted <= SHARE + 2, "|".join([str(o)[:40] for o in hog] + applied)
    # The other's first is applied after at most two of the hog's: the one appended, then one in turn.
    assert "other" in applied[:3] and applied.count("other") == SHARE, applied


def test_followers_apply_a_bulk_entry_while_their_leader_does(
    slow_bulk_voters: list[tuple[Replication, ContextStore]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader that sent the commit index only after applying made its followers begin each bulk
    entry ``APPLY_S`` after it: a write behind the entry waited for both applies in turn."""
    began: dict[int, float] = {}

    def note_batch(number: int, command: Any) -> None:
        if isinstance(command, Batch):
            began[number] = time.monotonic()

    before_applies(slow_bulk_voters, monkeypatch, note_batch)  # wraps the slow apply: noted before its sleep
    leader = slow_bulk_voters[0][0]
    asyncio.run(leader.propose(_batch("one"), TIMEOUT_S))
    wait_until(lambda: len(began) == 3, "a follower did not apply the batch")
    assert max(began[1], began[2]) - began[0] < APPLY_S / 2, began


def test_a_forwarded_batch_that_waited_too_long_is_refused_to_its_follower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four batches through a follower at once, on voters with a 3.8 s request timeout (1.9 s to wait
    in the lanes) that apply a batch in 1.25 s: the second is taken after ~1.25 s; the third and the
    fourth would be taken after ~2.5 s, so they are refused at the leader, the refusal is sent back to
    the follower, and they are never applied. Each wait is ~0.6 s from the budget either way.

    The applies are slow in steps, as a real bulk apply is: a leader that slept through its first
    batch's apply read the follower's next three only after it, when they had waited for nothing
    (one full-suite run in CI applied the third)."""
    with in_process_cluster(tmp_path, request_timeout=3.8) as voters:
        slow_preparations(voters, monkeypatch, 1.25, lambda command: isinstance(command, Batch))
        follower, store = voters[1]

        async def through_the_follower() -> list[Any]:
            proposals = [follower.propose(_batch(f"f{i}"), TIMEOUT_S) for i in range(4)]
            return await asyncio.gather(*proposals, return_exceptions=True)

        outcomes = asyncio.run(through_the_follower())
        refused = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NotApplied)]
        assert refused == [2, 3] and "waited its turn" in str(outcomes[2]), outcomes
        last = max(outcome["version"] for outcome in outcomes if isinstance(outcome, dict))
        wait_until(lambda: store.applied_index() >= last, "the follower did not apply what was taken")
        for i in range(4):
            assert (store.get("ns", f"f{i}-99") is None) == (i in refused)
