"""Search from the outside (issue 15): the REST endpoint on a real 3-node cluster.

- The same query answers identically on every node (one read index each: no write in between), on a
  follower that caught up through a snapshot install, and after the whole cluster restarted.
- Bad input names the parameter (422); the Python client and ``mcpdb search`` read the same answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mcpdb.client import Client
from mcpdb.ops.localcluster import LocalCluster
from tests.conftest import start_cluster

FACTS = [
    ("m-tea", "u1", "Ada drinks green tea every morning"),
    ("m-paris", "u1", "Ada lived in Paris for three years"),
    ("m-chess", "u2", "Bo plays chess on Sundays with his brother"),
    ("m-garden", None, "The community garden opens at nine"),
    ("m-tea2", "u2", "Bo prefers black tea to coffee"),
]
QUERIES: list[dict[str, Any]] = [
    {"q": "tea"},
    {"q": "tea", "user_id": "u1"},
    {"q": "Who plays chess on Sundays?", "k": 2},
    {"q": "garden tea Paris", "kind": "memory", "k": 10},
]


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _answers(cluster: LocalCluster, node_ids: list[str]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    with httpx.Client(timeout=10) as http:
        for node_id in node_ids:
            url = cluster.spec(node_id).url + "/v1/namespaces/app/search"
            answers = []
            for params in QUERIES:
                response = http.get(url, params=params)
                assert response.status_code == 200, response.text
                body = response.json()
                answers.append([(r["id"], r["score"], r["context"]["version"]) for r in body["results"]])
            found[node_id] = answers
    return found


def _put_facts(url: str) -> None:
    with httpx.Client(timeout=10) as http:
        for context_id, user, fact in FACTS:
            body = {"kind": "memory", "facts": [fact], "user_id": user}
            http.put(f"{url}/v1/namespaces/app/contexts/{context_id}", json=body).raise_for_status()


def test_a_search_answers_the_same_on_every_node_after_a_snapshot_install_and_a_restart(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    try:
        leader = cluster.leader()
        assert leader is not None
        behind = next(n.node_id for n in cluster.layout.nodes if n.node_id != leader)
        cluster.stop(behind)
        _put_facts(cluster.spec(leader).url)
        with httpx.Client(timeout=60) as http:
            forced = http.post(
                cluster.spec(leader).url + "/v1/node/snapshot", headers={"Content-Type": "application/json"}
            )
            assert forced.status_code == 200 and forced.json()["written"], forced.text
        cluster.start(behind)
        target = cluster.node_status(leader)["commit_index"]
        _wait_for(lambda: (cluster.node_status(behind) or {}).get("applied_index", 0) >= target)
        assert (cluster.data_dir / behind / "store" / "CURRENT").read_text() != "gen-1", "no snapshot installed"
        node_ids = [n.node_id for n in cluster.layout.nodes]
        first = _answers(cluster, node_ids)
        assert all(answers == first[leader] for answers in first.values()), first
        tea, tea_for_u1, chess, many = first[leader]
        assert {hit[0] for hit in tea} == {"m-tea", "m-tea2"}
        assert [hit[0] for hit in tea_for_u1] == ["m-tea"]  # u2's tea is not u1's
        assert chess[0][0] == "m-chess" and len(chess) <= 2
        assert {hit[0] for hit in many} == {"m-tea", "m-tea2", "m-paris", "m-garden"}

        cluster.stop_all()
        cluster.start_all()
        cluster.wait_ready(timeout=30)
        assert _answers(cluster, node_ids) == first
    finally:
        cluster.stop_all(graceful=False)


def test_bad_search_input_names_the_parameter(shared_cluster: LocalCluster) -> None:
    url = shared_cluster.urls()[0] + "/v1/namespaces/bad/search"
    cases = [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "tea", "k": 0}, "k"),
        ({"q": "tea", "k": 101}, "k"),
        ({"q": "tea", "mode": "telepathy"}, "mode"),
        ({"q": "tea", "kind": "session"}, "kind"),
        ({"q": "tea", "kind": "recipe"}, "kind"),
        ({"q": "tea", "consistency": "eventual"}, "consistency"),
    ]
    with httpx.Client(timeout=10) as http:
        for params, name in cases:
            response = http.get(url, params=params)
            assert response.status_code == 422, (params, response.text)
            assert f"query.{name}" in response.json()["message"], (params, response.json())
        no_model = http.get(url, params={"q": "tea", "mode": "vector"})  # these nodes run --no-inference
        assert no_model.status_code == 404 and no_model.json()["error"] == "model_not_found", no_model.text
        hybrid = http.get(url, params={"q": "tea"}).json()
        assert hybrid["mode"] == "hybrid" and hybrid["vector"] == "unavailable"
        # no word; only stopwords or unindexed long words, ranked by words alone (lexical, or hybrid on these
        # nodes without an embedding model)
        long_word = "x" * 40
        for params in ({"q": "  \t "}, {"q": "?!"}, {"q": "the and of", "mode": "lexical"}, {"q": f"the {long_word}"}):
            refused = http.get(url, params=params)
            assert refused.status_code == 422 and refused.json()["error"] == "invalid_query", (params, refused.text)
            assert refused.json()["parameter"] == "q"
        for repeated in ([("q", "tea"), ("q", "cello")], [("q", "tea"), ("user_id", "ada"), ("user_id", "bob")]):
            refused = http.get(url, params=repeated)  # a gateway may check the first, the route reads the last
            assert refused.status_code == 400 and refused.json()["error"] == "repeated_parameter", refused.text
        assert http.get(url, params=[("q", "tea"), ("tags", "a"), ("tags", "b")]).status_code == 200


def test_the_client_searches_with_filters(shared_cluster: LocalCluster) -> None:
    cluster = shared_cluster
    _put_facts(cluster.urls()[1])
    with httpx.Client(timeout=10) as http:
        http.put(
            cluster.urls()[1] + "/v1/namespaces/app/contexts/m-tagged",
            json={"kind": "memory", "facts": ["tea with lemon"], "user_id": "u1", "tags": ["drinks"]},
        ).raise_for_status()
    with Client(cluster.urls()) as client:
        tagged = client.search("app", "tea", tags=["drinks"])
        assert [r["id"] for r in tagged["results"]] == ["m-tagged"]
        mine = client.search("app", "tea lemon", user_id="u1", k=1)
        assert [r["id"] for r in mine["results"]] == ["m-tagged"] and mine["read_index"] is not None
        assert client.search("app", "tea", kind="task")["results"] == []
