"""Scopes, token checks and rate limits (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpdb.auth import ROOT, Principal, Scope, new_token, principal_for, token_id_of
from mcpdb.errors import Forbidden, Hidden
from mcpdb.node.http.access import path_refusal
from mcpdb.node.http.rate_limit import TokenBuckets


def test_scopes_nest_and_other_namespaces_are_hidden() -> None:
    writer = Principal("t", {"a": Scope.write})
    writer.check("a", Scope.read)
    writer.check("a", Scope.write)
    with pytest.raises(Forbidden):
        writer.check("a", Scope.admin)
    with pytest.raises(Hidden):
        writer.check("b", Scope.read)
    everywhere = Principal("t", {"*": Scope.read, "a": Scope.admin})
    assert everywhere.allows("zz", Scope.read) and not everywhere.allows("zz", Scope.write)
    assert everywhere.allows("a", Scope.admin)
    assert ROOT.cluster_admin and not everywhere.cluster_admin
    assert everywhere.may_manage({"a": Scope.read}) and not everywhere.may_manage({"b": Scope.read})


def test_a_token_matches_only_its_own_hash() -> None:
    token, token_id, digest = new_token()
    record = {"id": token_id, "hash": digest, "scopes": {"a": "read"}}
    assert token_id_of(token) == token_id
    assert principal_for(token, record) == Principal(token_id, {"a": Scope.read})
    other, _, _ = new_token()
    assert principal_for(other, record) is None
    assert principal_for(token, None) is None
    assert token_id_of("Bearer nonsense") is None


def test_path_rules() -> None:
    reader = Principal("t", {"a": Scope.read})
    assert path_refusal(reader, "GET", "/v1/namespaces/a/contexts/x") is None
    assert path_refusal(reader, "PUT", "/v1/namespaces/a/contexts/x").status == 403
    assert path_refusal(reader, "GET", "/v1/namespaces/b/contexts/x").status == 404
    assert path_refusal(reader, "GET", "/v1/namespaces/b").status == 404
    assert path_refusal(reader, "POST", "/v1/cluster/members").status == 403
    assert path_refusal(reader, "POST", "/v1/internal/assign").status == 403
    assert path_refusal(reader, "GET", "/v1/cluster") is None
    assert path_refusal(ROOT, "POST", "/v1/internal/assign") is None


@given(rate=st.floats(min_value=0.5, max_value=1000), gaps=st.lists(st.floats(min_value=0, max_value=2), max_size=200))
def test_buckets_never_admit_more_than_the_burst_plus_the_rate(rate: float, gaps: list[float]) -> None:
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0], burst_seconds=2.0)
    admitted = 0
    for gap in gaps:
        now[0] += gap
        wait = buckets.take("t", rate)
        admitted += wait == 0.0
        assert wait >= 0.0
    assert admitted <= max(1.0, 2.0 * rate) + rate * now[0] + 1e-6


def test_a_refused_request_is_told_when_to_retry() -> None:
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0], burst_seconds=1.0)
    assert buckets.take("t", 2.0) == 0.0 and buckets.take("t", 2.0) == 0.0
    wait = buckets.take("t", 2.0)
    assert wait == pytest.approx(0.5)
    now[0] += wait
    assert buckets.take("t", 2.0) == 0.0
