"""Properties of the AppendEntries guard against Raft's receiver rule (§5.3).

Each example builds a leader log and a follower log that obey Raft's
invariants (a shared prefix, then either more of the leader's entries or
older-term entries the leader does not have), sends a slice of the leader's
log as pysyncobj would, runs ``reconcile`` and then a faithful model of
pysyncobj 0.3.17's handler (which truncates whenever the follower has more
entries than prevLogIdx). The result must equal what a textbook Raft
follower does, never delete an entry that matches the leader's, and never
acknowledge or commit an entry that is not the leader's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mcpdb.raft.log_guard import StepBack, reconcile
from mcpdb.raft.pysyncobj_bridge import carries_entries


@dataclass
class Scenario:
    leader: list[int]  # terms of entries 1..n
    follower: list[int]  # terms of entries 1..m
    first_index: int  # follower's first retained index (compaction)
    current_term: int
    prev: int
    count: int
    commit: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    steps = draw(st.lists(st.integers(0, 2), min_size=0, max_size=25))
    leader = [1]
    for step in steps:
        leader.append(leader[-1] + step)
    current_term = leader[-1] + draw(st.integers(0, 1))
    shared = draw(st.integers(1, len(leader)))
    follower = leader[:shared]
    if draw(st.booleans()):
        follower = leader[: draw(st.integers(shared, len(leader)))]
    else:
        for index in range(shared, shared + draw(st.integers(0, 8))):
            low = follower[-1]
            if low >= leader[-1]:
                break
            term = draw(st.integers(low, max(low, current_term - 1)))
            # Older-term entries the leader does not have: same index never
            # carries the same term (Log Matching), and none of the leader's term.
            if term >= current_term or (index < len(leader) and leader[index] == term):
                break
            follower.append(term)
    first_index = draw(st.integers(1, shared))
    prev = draw(st.integers(1, len(leader)))
    count = draw(st.integers(0, len(leader) - prev))
    commit = draw(st.integers(1, len(leader)))
    return Scenario(leader, follower, first_index, current_term, prev, count, commit)


def _message(s: Scenario) -> dict:
    entries = [(b"", i, s.leader[i - 1]) for i in range(s.prev + 1, s.prev + s.count + 1)]
    return {
        "type": "append_entries",
        "term": s.current_term,
        "commit_index": s.commit,
        "prevLogIdx": s.prev,
        "prevLogTerm": s.leader[s.prev - 1],
        "entries": entries,
    }


def _raft_follower(s: Scenario) -> tuple[list[int], int | None]:
    """Textbook receiver: reject on prev mismatch, truncate only at a conflict, append the rest."""
    log = list(s.follower)
    if s.prev > len(log) or s.prev < s.first_index or log[s.prev - 1] != s.leader[s.prev - 1]:
        return log, None
    for index in range(s.prev + 1, s.prev + s.count + 1):
        term = s.leader[index - 1]
        if index <= len(log) and log[index - 1] != term:
            del log[index - 1 :]
        if index > len(log):
            log.append(term)
    return log, s.prev + s.count


def _pysyncobj_handler(
    log: list[int], first_index: int, message: dict, leader: list[int]
) -> tuple[list[int], int | None, int | None, list[int]]:
    """pysyncobj 0.3.17's append_entries branch: returns log, ack, commit, deleted-matching indexes."""
    log = list(log)
    deleted_matching: list[int] = []
    if "prevLogIdx" not in message:
        return log, None, min(message["commit_index"], len(log)), deleted_matching
    prev = message["prevLogIdx"]
    if prev < first_index or prev > len(log) or log[prev - 1] != message["prevLogTerm"]:
        return log, None, None, deleted_matching
    if len(log) > prev:
        deleted_matching = [
            i for i in range(prev + 1, len(log) + 1) if i <= len(leader) and log[i - 1] == leader[i - 1]
        ]
        del log[prev:]
    for _, index, term in message["entries"]:
        assert index == len(log) + 1
        log.append(term)
    ack = message["entries"][-1][1] if message["entries"] else prev
    return log, ack, min(message["commit_index"], len(log)), deleted_matching


@settings(max_examples=3000, deadline=None)
@given(scenarios())
def test_guarded_handler_behaves_like_raft(s: Scenario) -> None:
    assume(s.first_index <= len(s.follower))
    result = reconcile(_message(s), s.current_term, s.first_index, len(s.follower), lambda index: s.follower[index - 1])
    log, ack, commit, deleted_matching = _pysyncobj_handler(s.follower, s.first_index, result.message, s.leader)
    if result.ack_through is not None:
        assert ack is None
        ack = result.ack_through

    expected_log, expected_ack = _raft_follower(s)
    assert log == expected_log
    assert deleted_matching == [], "an entry matching the leader's was truncated"
    if expected_ack is None:
        assert ack is None
    else:
        assert ack is not None and ack >= expected_ack
    if ack is not None:
        assert log[:ack] == s.leader[:ack], "acknowledged an entry the leader does not have"
    if commit is not None:
        assert log[:commit] == s.leader[:commit], "committed an entry the leader does not have"


def test_unguarded_handler_truncates_matching_entries() -> None:
    """The defect itself: a re-sent older slice makes pysyncobj drop matching entries."""
    leader = [1, 1, 2, 2, 2]
    message = {
        "type": "append_entries",
        "term": 2,
        "commit_index": 5,
        "prevLogIdx": 2,
        "prevLogTerm": 1,
        "entries": [(b"", 3, 2)],
    }
    _, _, _, deleted = _pysyncobj_handler(leader, 1, message, leader)
    assert deleted == [3, 4, 5]
    guarded = reconcile(message, 2, 1, 5, lambda index: leader[index - 1])
    _, ack, _, deleted = _pysyncobj_handler(leader, 1, guarded.message, leader)
    assert deleted == [] and ack == 5


def test_messages_pysyncobj_rejects_pass_unchanged() -> None:
    follower = [1, 1, 2]
    stale_term = {
        "type": "append_entries",
        "term": 1,
        "commit_index": 3,
        "prevLogIdx": 1,
        "prevLogTerm": 1,
        "entries": [],
    }
    assert reconcile(stale_term, 2, 1, 3, lambda i: follower[i - 1]).message is stale_term
    wrong_prev = {**stale_term, "term": 2, "prevLogIdx": 3, "prevLogTerm": 1}
    assert reconcile(wrong_prev, 2, 1, 3, lambda i: follower[i - 1]).message is wrong_prev
    chunk = {**stale_term, "term": 2, "transmission": "start", "data": b""}
    assert reconcile(chunk, 2, 1, 3, lambda i: follower[i - 1]).message is chunk


def test_a_follower_answers_past_its_log_no_higher_than_its_lowest_mismatch_of_the_term() -> None:
    """Log 1..7 (first 1): entries 6..7 of term 1, the leader's of term 3 differ from 6 on."""
    log = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1}
    step_back = StepBack()

    def answer(message: dict[str, Any]) -> Any:
        return step_back.answer(message, 3, 1, 7, log.__getitem__, 5)

    beyond = {"type": "append_entries", "term": 3, "commit_index": 9, "prevLogIdx": 9, "prevLogTerm": 3, "entries": []}
    assert answer(beyond) is None  # no mismatch yet: pysyncobj's "last + 1"
    assert answer({**beyond, "prevLogIdx": 7}) is None and answer({**beyond, "prevLogIdx": 6}) is None  # mismatches
    stepped = answer(beyond)
    assert stepped is not None and stepped.step_back_to == 6 and "prevLogIdx" not in stepped.message
    assert stepped.message["commit_index"] == 5  # commits nothing this log has not verified
    assert answer({**beyond, "transmission": "start"}) is None and answer({**beyond, "term": 2}) is None
    step_back.accepted(5)  # the leader's entries through 5 only: 6 still differs
    assert answer(beyond) is not None
    step_back.accepted(6)
    assert answer(beyond) is None
    assert answer({**beyond, "prevLogIdx": 6}) is None and answer(beyond) is not None
    assert answer({**beyond, "term": 4}) is None  # a new term forgets it
    assert answer({**beyond, "term": 4, "prevLogIdx": 6, "prevLogTerm": 4}) is None  # lowest 6, in term 4
    above = answer({**beyond, "term": 4, "prevLogIdx": 7, "prevLogTerm": 4})  # a mismatch above it: answered 6
    assert above is not None and above.step_back_to == 6 and "prevLogIdx" not in above.message
    below_first = step_back.answer({**beyond, "term": 4}, 4, 7, 9, lambda index: 4, 5)  # a snapshot covers 6 now
    assert below_first is None


def test_only_appendentries_with_entries_may_wait_for_a_backed_up_connection() -> None:
    """What McpdbTransport drops to a peer that is not reading: batches of entries, which a
    follower re-requests after the gap; never a heartbeat (it carries the commit index and keeps
    the follower's election timer) nor a part of a chunked entry (the follower concatenates them)."""
    entries = {"type": "append_entries", "term": 2, "commit_index": 5, "prevLogIdx": 4, "prevLogTerm": 2}
    assert carries_entries({**entries, "entries": [(b"x", 5, 2)]})
    assert not carries_entries({**entries, "entries": []})  # heartbeat
    assert not carries_entries({**entries, "transmission": "process", "data": b"..."})
    assert not carries_entries({"type": "append_entries", "serialized": (b"chunk", False, False), "term": 2})
    assert not carries_entries({"type": "next_node_idx", "entries": [(b"x", 5, 2)]})
    assert not carries_entries([("x", 1)])
