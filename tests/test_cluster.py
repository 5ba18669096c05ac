"""Multi-process integration on real 3-node clusters (loopback, free ports, own process groups)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from mcpdb.ops.localcluster import LocalCluster
from mcpdb.raft.settings import ELECTION_TIMEOUT_S
from tests.conftest import start_cluster

JSON = {"Content-Type": "application/json"}

pytestmark = pytest.mark.integration


def _ctx(url: str, ns: str = "t", context_id: str = "x") -> str:
    return f"{url}/v1/namespaces/{ns}/contexts/{context_id}"


def _memory(fact: str) -> dict:
    return {"kind": "memory", "facts": [fact]}


def _roles(cluster: LocalCluster) -> tuple[str, list[str]]:
    leader = cluster.leader()
    assert leader is not None
    return leader, [n.node_id for n in cluster.layout.nodes if n.node_id != leader]


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_write_through_one_follower_is_read_linearizably_on_the_other(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    _, (first, second) = _roles(cluster)
    for i in range(20):
        written = httpx.put(_ctx(cluster.spec(first).url, ns="through", context_id=f"k{i}"), json=_memory(f"v{i}"))
        assert written.status_code == 201, written.text
        # No sleep: the read index makes the other follower wait until it has the write.
        read = httpx.get(_ctx(cluster.spec(second).url, ns="through", context_id=f"k{i}"))
        assert read.status_code == 200 and read.json()["facts"] == [f"v{i}"]
        assert read.json()["version"] == written.json()["version"]


def test_compare_and_set_conflict_is_409_with_the_current_version(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    url = cluster.urls()[0]
    first = httpx.put(_ctx(url, ns="cas"), json=_memory("a")).json()["version"]
    second = httpx.put(_ctx(url, ns="cas"), json=_memory("b"), headers={"If-Match": str(first)})
    assert second.status_code == 200
    stale = httpx.put(_ctx(cluster.urls()[1], ns="cas"), json=_memory("c"), headers={"If-Match": str(first)})
    assert stale.status_code == 409
    assert stale.json()["current_version"] == second.json()["version"]
    assert httpx.put(_ctx(url, ns="cas"), json=_memory("d"), headers={"If-None-Match": "*"}).status_code == 409
    assert httpx.get(_ctx(url, ns="cas")).json()["facts"] == ["b"]


def test_leader_kill_keeps_every_acknowledged_write_and_the_node_catches_up(cluster: LocalCluster) -> None:
    leader, followers = _roles(cluster)
    acknowledged: dict[str, str] = {}
    with httpx.Client(timeout=5) as http:
        for i in range(200):
            url = cluster.spec(followers[i % 2] if i % 3 else leader).url
            if http.put(_ctx(url, context_id=f"w{i}"), json=_memory(str(i))).status_code in (200, 201):
                acknowledged[f"w{i}"] = str(i)
        cluster.kill(leader)
        killed_at = time.monotonic()
        # Writes during the election: retried on the survivors until acknowledged.
        for i in range(200, 230):
            while True:
                response = http.put(_ctx(cluster.spec(followers[i % 2]).url, context_id=f"w{i}"), json=_memory(str(i)))
                if response.status_code in (200, 201):
                    acknowledged[f"w{i}"] = str(i)
                    break
                assert response.status_code == 503, response.text
                assert time.monotonic() - killed_at < 10
                time.sleep(0.05)
        new_leader = cluster.wait_ready(nodes=followers)
        assert new_leader in followers
        for context_id, fact in acknowledged.items():
            read = http.get(_ctx(cluster.spec(followers[0]).url, context_id=context_id))
            assert read.status_code == 200 and read.json()["facts"] == [fact], context_id

        cluster.start(leader)
        cluster.wait_ready()
        target = cluster.node_status(new_leader)["commit_index"]
        _wait_for(lambda: (cluster.node_status(leader) or {}).get("applied_index", 0) >= target)
        for context_id, fact in acknowledged.items():
            read = http.get(_ctx(cluster.spec(leader).url, context_id=context_id) + "?consistency=stale")
            assert read.status_code == 200 and read.json()["facts"] == [fact], context_id


def test_an_idle_cluster_elects_a_new_leader_within_two_seconds(cluster: LocalCluster) -> None:
    """Followers that have not talked for longer than pysyncobj's connection
    timeout must still deliver the first RequestVote (keepalives, raft_transport)."""
    leader, followers = _roles(cluster)
    old_term = cluster.node_status(leader)["term"]
    time.sleep(4.5)  # > connectionTimeout (3.5 s) with no client traffic at all
    cluster.kill(leader)
    killed_at = time.monotonic()
    elected: tuple[float, int] | None = None
    while elected is None and time.monotonic() - killed_at < 5:
        for node_id in followers:
            status = cluster.node_status(node_id) or {}
            if status.get("role") == "leader":
                elected = (time.monotonic() - killed_at, status["term"])
        time.sleep(0.02)
    assert elected is not None, "no new leader within 5 s"
    seconds, term = elected
    # Without keepalives the first vote request was dropped and the election took 1.5-2 s or more.
    # The term is not asserted: two followers whose randomised timeouts fall within one 50 ms Raft
    # tick split the vote and elect at term + 2, which Raft allows (2 of 7 runs here, in 1.57 s);
    # rarely they split twice (term + 3, 2.13 s once in a full suite), and each round past the
    # second may take one more election timeout (at most 1 s).
    allowed = 2.0 + ELECTION_TIMEOUT_S[1] * max(0, term - old_term - 2)
    assert term > old_term and seconds < allowed, f"leader at term {term} (was {old_term}) after {seconds:.2f} s"


def test_a_follower_paused_past_its_election_timeout_rejoins_without_raising_the_term(cluster: LocalCluster) -> None:
    """A follower held longer than an election timeout (SIGSTOP here) counts the stall and rejoins
    under the same leader and term. (The case the stall rule is for, a thread held inside a tick
    with heartbeats queued unread behind the deadline check, is what the 1 M bench's catch-up
    measures: a SIGSTOP usually lands in poll, whose wake-up reads those heartbeats first.)"""
    leader, followers = _roles(cluster)
    term = cluster.node_status(leader)["term"]
    cluster.pause(followers[0])
    time.sleep(2.5)  # > the election timeout (0.5-1.0 s), < pysyncobj's connection timeout (3.5 s)
    cluster.resume(followers[0])
    time.sleep(3)  # several election timeouts for it to stand, had it wanted to
    statuses = {node_id: cluster.node_status(node_id) for node_id in (leader, *followers)}
    assert all(status is not None and status["term"] == term for status in statuses.values()), statuses
    assert statuses[leader]["role"] == "leader"
    assert statuses[followers[0]]["raft_thread_stalls"] >= 1, statuses[followers[0]]
    with httpx.Client(timeout=5) as http:  # and it serves again
        written = http.put(
            cluster.spec(followers[0]).url + "/v1/namespaces/p/contexts/after-pause",
            json={"kind": "memory", "facts": ["ok"]},
        )
        assert written.status_code in (200, 201), written.text


def test_a_node_behind_a_compacted_log_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, extra_args=["--compaction-entries", "200"])
    try:
        leader, (stopped, running) = _roles(cluster)
        cluster.stop(stopped)
        with httpx.Client(timeout=5) as http:
            for i in range(600):
                http.put(_ctx(cluster.spec(leader).url, context_id=f"c{i}"), json=_memory(str(i))).raise_for_status()
            _wait_for(lambda: cluster.node_status(leader)["log_first_index"] > 2)
            first_index = cluster.node_status(leader)["log_first_index"]
            cluster.start(stopped)
            target = cluster.node_status(leader)["commit_index"]
            _wait_for(lambda: (cluster.node_status(stopped) or {}).get("applied_index", 0) >= target, 30)
            status = cluster.node_status(stopped)
            assert status["log_first_index"] >= first_index - 1, "caught up by replaying, not a snapshot"
            # Installing a snapshot swaps in a new LMDB generation.
            assert (cluster.data_dir / stopped / "store" / "CURRENT").read_text() != "gen-1"
            for i in range(0, 600, 7):
                read = http.get(_ctx(cluster.spec(stopped).url, context_id=f"c{i}") + "?consistency=stale")
                assert read.status_code == 200 and read.json()["facts"] == [str(i)]
    finally:
        cluster.stop_all(graceful=False)


def _log_starts_at_or_after(cluster: LocalCluster, node_id: str, index: int) -> bool:
    return bool((cluster.node_status(node_id) or {}).get("log_first_index", 0) >= index)


def test_a_forced_snapshot_is_written_beside_the_running_node_and_compacts_its_journal(cluster: LocalCluster) -> None:
    with httpx.Client(timeout=10) as http:
        for spec in cluster.layout.nodes:
            for i in range(100):
                http.put(_ctx(spec.url, context_id=f"{spec.node_id}-{i}"), json=_memory(str(i))).raise_for_status()
        for spec in cluster.layout.nodes:
            before = cluster.node_status(spec.node_id) or {}
            written = http.post(f"{spec.url}/v1/node/snapshot", headers={"Content-Type": "application/json"})
            assert written.status_code == 200, written.text
            body = written.json()
            assert body["written"] and body["index"] >= before["applied_index"] and body["bytes"] > 0
            _wait_for(functools.partial(_log_starts_at_or_after, cluster, spec.node_id, body["index"] - 1))
            assert (cluster.data_dir / spec.node_id / "raft" / "raft.snapshot").stat().st_size == body["bytes"]
        read = http.get(_ctx(cluster.urls()[0], context_id="n3-99"))
        assert read.status_code == 200 and read.json()["facts"] == ["99"]


def test_without_a_quorum_writes_and_reads_get_503_in_bounded_time(cluster: LocalCluster) -> None:
    survivor = cluster.layout.nodes[0].node_id
    for spec in cluster.layout.nodes[1:]:
        cluster.kill(spec.node_id)
    url = cluster.spec(survivor).url
    for method, kwargs in (("PUT", {"json": _memory("x")}), ("GET", {})):
        began = time.monotonic()
        response = httpx.request(method, _ctx(url), timeout=15, **kwargs)
        elapsed = time.monotonic() - began
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["applied"] in ("no", "unknown")
        assert elapsed < 3.0 + 2.0, f"{method} took {elapsed:.1f} s (request timeout is 3 s)"


def test_a_full_restart_brings_everything_back(cluster: LocalCluster) -> None:
    url = cluster.urls()[0]
    httpx.put(_ctx(url, context_id="keep"), json=_memory("kept")).raise_for_status()
    httpx.post(f"{url}/v1/namespaces/t/sessions/s/turns", json={"role": "user", "content": "hi"}).raise_for_status()
    cluster.stop_all(graceful=True)
    cluster.start_all()
    cluster.wait_ready()
    for node_url in cluster.urls():
        assert httpx.get(_ctx(node_url, context_id="keep")).json()["facts"] == ["kept"]
        assert httpx.get(_ctx(node_url, context_id="s")).json()["turns"][0]["content"] == "hi"


def test_ttl_expiry_reaches_every_node(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    url = cluster.urls()[0]
    httpx.put(_ctx(url, ns="ttl", context_id="short"), json={**_memory("gone soon"), "ttl": 1}).raise_for_status()
    httpx.put(_ctx(url, ns="ttl", context_id="long"), json=_memory("stays")).raise_for_status()
    for node_url in cluster.urls():
        _wait_for(lambda u=node_url: httpx.get(_ctx(u, ns="ttl", context_id="short")).status_code == 404, timeout=5)
        assert httpx.get(_ctx(node_url, ns="ttl", context_id="long")).status_code == 200


def test_bad_input_gets_clear_errors_and_changes_nothing(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    url = cluster.urls()[0]
    cases = [
        ("PUT", _ctx(url), {"content": b'{"kind": "memory"', "headers": JSON}, 400),
        ("PUT", _ctx(url), {"content": orjson.dumps(_memory("a"))}, 415),  # a body must be declared JSON
        ("PUT", _ctx(url), {"json": {"kind": "memory", "facts": ["a"], "colour": "red"}}, 422),
        ("PUT", _ctx(url), {"json": {"kind": "nope"}}, 422),
        ("PUT", _ctx(url, context_id="..x"), {"json": _memory("a")}, 400),
        ("PUT", _ctx(url, ns="Bad NS"), {"json": _memory("a")}, 400),
        ("PUT", _ctx(url), {"json": _memory("a"), "headers": {"If-Match": "abc"}}, 400),
        ("PUT", _ctx(url), {"content": b"x" * (2 << 20), "headers": JSON}, 413),
        ("GET", _ctx(url) + "?consistency=maybe", {}, 422),
        ("GET", _ctx(url, context_id="..x"), {}, 400),
        ("GET", _ctx(url, ns="Bad NS"), {}, 400),
        ("GET", _ctx(url, context_id="absent") + "?consistency=stale", {}, 404),
        ("DELETE", _ctx(url, context_id="absent"), {}, 404),
    ]
    for method, target, kwargs, status in cases:
        response = httpx.request(method, target, **kwargs)
        assert response.status_code == status, (method, target, response.text)
        assert response.json()["message"], response.text
    assert httpx.get(_ctx(url)).status_code == 404


def test_token_is_required_except_for_health(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, size=1, token="s3cret")
    try:
        url = cluster.urls()[0]
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        denied = httpx.get(_ctx(url))
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
        assert httpx.get(_ctx(url), headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/v1/cluster").status_code == 401
        assert httpx.get(_ctx(url), headers={"Authorization": "Bearer s3cret"}).status_code == 404
    finally:
        cluster.stop_all(graceful=False)


def test_api_docs_are_served_without_a_cdn(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    url = cluster.urls()[0]
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    assert httpx.get(f"{url}/docs/assets/swagger-ui-bundle.js").status_code == 200
    schema = httpx.get(f"{url}/openapi.json").json()
    assert schema["openapi"].startswith("3.1") and "/v1/namespaces/{namespace}/contexts/{context_id}" in schema["paths"]
