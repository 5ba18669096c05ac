"""Inference on a real 3-node cluster with the bundled model: sessions, OpenAI client, failover.

One cluster serves the whole module (each node loads the model once, which
is the slow part); tests use their own sessions so they stay independent.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.memory_corpus import memories as corpus_memories
from mcpdb.ops.localcluster import LocalCluster
from tests.browser import chromium, pixels_of, rendered_dom, screenshot
from tests.conftest import start_cluster

pytestmark = pytest.mark.integration
NS = "app"


def _models(url: str) -> dict[str, list[str]]:
    body = httpx.get(url + "/v1/models", timeout=2).json()
    return {model["id"]: model["nodes"] for model in body["data"]}


@pytest.fixture(scope="module")
def llm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("llm"), inference=True, embedding=True, extra_args=["--n-ctx", "2048"]
    )
    try:
        cluster.wait_models(timeout=120)
        http = httpx.Client(timeout=5)
        http.put(
            f"{cluster.urls()[0]}/v1/namespaces/{NS}/contexts/helper",
            json={"kind": "instruction", "role": "a terse assistant", "text": "Answer in one short sentence."},
        )
        http.put(
            f"{cluster.urls()[0]}/v1/namespaces/{NS}/contexts/ada",
            json={"kind": "profile", "name": "Ada", "preferences": {"tone": "plain"}, "goals": ["learn Raft"]},
        )
        yield cluster
    finally:
        cluster.stop_all(graceful=False)


def _model(cluster: LocalCluster) -> str:
    running = next(spec.url for spec in cluster.layout.nodes if cluster.running(spec.node_id))
    return next(iter(_models(running)))


def _chat(url: str, model: str, session: str, text: str, key: str | None = None, **extra: object) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        "temperature": 0,
        "namespace": NS,
        "session_id": session,
        "user_id": "ada",
        **extra,
    }
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def _turns(url: str, session: str) -> list[dict]:
    response = httpx.get(f"{url}/v1/namespaces/{NS}/contexts/{session}", timeout=5)
    response.raise_for_status()
    return response.json()["turns"]


def test_a_sessions_turns_persist_and_read_back_from_every_node(llm_cluster: LocalCluster) -> None:
    urls, model, session = llm_cluster.urls(), _model(llm_cluster), f"s-{uuid.uuid4().hex[:8]}"
    replies = []
    for entry, text in zip(urls, ["What is Raft?", "And a leader?"], strict=False):
        response = _chat(entry, model, session, text)
        assert response.status_code == 200, response.text
        body = response.json()
        assert response.headers["x-mcpdb-node"] == body["mcpdb"]["node"]
        assert body["usage"]["completion_tokens"] >= 1
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        assert body["mcpdb"]["context_index"] >= body["mcpdb"]["read_index"]
        replies.append(body["choices"][0]["message"]["content"])
    # The follow-up went to the node holding the session's prefix and reused it.
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    for url in urls:
        turns = _turns(url, session)
        assert [(t["role"], t["content"]) for t in turns] == [
            ("user", "What is Raft?"),
            ("assistant", replies[0]),
            ("user", "And a leader?"),
            ("assistant", replies[1]),
        ]


def test_a_retried_request_with_the_same_idempotency_key_adds_no_turn(llm_cluster: LocalCluster) -> None:
    urls, model, session = llm_cluster.urls(), _model(llm_cluster), f"s-{uuid.uuid4().hex[:8]}"
    first = _chat(urls[0], model, session, "Hello?", key="k-1").json()
    again = _chat(urls[1], model, session, "Hello?", key="k-1").json()
    assert again["mcpdb"]["replayed"] is True
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert len(_turns(urls[2], session)) == 2


def test_the_official_openai_client_works_streaming_and_not(llm_cluster: LocalCluster) -> None:
    openai = pytest.importorskip("openai")
    model, session = _model(llm_cluster), f"s-{uuid.uuid4().hex[:8]}"
    api = openai.OpenAI(base_url=llm_cluster.urls()[1] + "/v1", api_key="unused", max_retries=0)
    extra = {"namespace": NS, "session_id": session}
    whole = api.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, extra_body=extra
    )
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    listed = [m.id for m in api.models.list()]
    assert model in listed
    chunks = list(
        api.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "More?"}],
            max_tokens=8,
            temperature=0,
            stream=True,
            extra_body=extra,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    assert _turns(llm_cluster.urls()[0], session)[-1]["content"] == streamed


def test_a_long_answer_streams_in_pieces_of_a_few_tokens(llm_cluster: LocalCluster) -> None:
    """The worker hands text to the event loop every STREAM_INTERVAL_S at most: a 48-token answer
    comes in more than one piece (it streams) and never in more pieces than tokens."""
    body = {
        "model": _model(llm_cluster),
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }
    pieces, final = [], {}
    with httpx.stream("POST", llm_cluster.urls()[0] + "/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                pieces += [c["delta"]["content"] for c in chunk.get("choices", []) if c["delta"].get("content")]
                final = chunk if chunk.get("usage") else final
    tokens = final["usage"]["completion_tokens"]
    assert tokens > 8 and 1 < len(pieces) <= tokens, (len(pieces), tokens)


def test_bad_requests_get_clear_errors(llm_cluster: LocalCluster) -> None:
    url, model = llm_cluster.urls()[0], _model(llm_cluster)
    post = lambda body: httpx.post(url + "/v1/chat/completions", json=body, timeout=30)  # noqa: E731
    hi = [{"role": "user", "content": "hi"}]
    assert post({"model": "gpt-nope", "messages": hi}).status_code == 404
    assert post({"model": model, "messages": hi, "session_id": "s"}).status_code == 422  # no namespace
    assert post({"model": model, "messages": hi, "n": 2}).status_code == 422
    assert post({"model": model, "messages": []}).status_code == 422
    huge = post({"model": model, "messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 8})
    assert huge.status_code == 413 and "window" in huge.json()["message"]
    streamed_huge = post(
        {"model": model, "messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 8, "stream": True}
    )
    assert streamed_huge.status_code == 413  # the status is decided before the stream starts
    missing_task = post({"model": model, "messages": hi, "namespace": NS, "task_id": "nope"})
    assert missing_task.status_code == 404


def _wait_embedders(http: httpx.Client, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + 120  # each node loads its embedding model after its chat model
    while not all(http.get(url + "/v1/node").json()["inference"]["embedding"] == "ready" for url in cluster.urls()):
        assert time.monotonic() < deadline, "the embedding models did not load"
        time.sleep(0.5)


def test_a_chat_recalls_the_memories_its_message_needs_and_the_next_turn_reuses_the_whole_prompt(
    llm_cluster: LocalCluster,
) -> None:
    """80 memories of one user (the retrieval benchmark's), a 256-token memory budget: the chat recalls
    the fact its message asks about and leaves memories out; the follow-up's prompt starts with the
    whole of the first one (its recall included), so the KV cache serves all of it."""
    urls, model, session = llm_cluster.urls(), _model(llm_cluster), f"s-{uuid.uuid4().hex[:8]}"
    held = [memory for memory in corpus_memories(1)]
    with httpx.Client(timeout=30) as http:
        _wait_embedders(http, llm_cluster)
        batch = [
            {"op": "put", "id": f"kim-{m.id}", "context": {"kind": "memory", "facts": [m.text], "user_id": "kim"}}
            for m in held
        ]
        http.post(f"{urls[0]}/v1/namespaces/{NS}/batch", json={"ops": batch}).raise_for_status()
        deadline = time.monotonic() + 180
        params = {"q": "allergic", "mode": "vector", "user_id": "kim", "kind": "memory"}
        while http.get(f"{urls[0]}/v1/namespaces/{NS}/search", params=params).json()["unembedded"]:
            assert time.monotonic() < deadline, "the leader did not embed the memories"
            time.sleep(0.5)
    allergy = f"kim-{held[0].id}"  # topic 0's fact: "Is allergic to ..."
    first = _chat(urls[0], model, session, "What am I allergic to?", user_id="kim").json()
    recalled = first["mcpdb"]["memories"]
    assert allergy in recalled and first["mcpdb"]["recall"] == "hybrid"
    provenance = first["mcpdb"]
    # the times count what came before the model (the read index, the message's embedding, the recall)
    assert 0 < provenance["prepared_s"] < provenance["ttft_s"] <= provenance["seconds"]
    assert 0 < len(recalled) < len(held) and first["mcpdb"]["omitted"]["memories"] == len(held) - len(recalled)
    turns = _turns(urls[1], session)
    assert turns[0]["content"] == "What am I allergic to?"  # the message as sent; its recall beside it
    assert turns[0]["metadata"]["memories"] == recalled and "Is allergic to" in turns[0]["metadata"]["recalled"]
    follow_up = _chat(urls[0], model, session, "Which foods make me sick?", user_id="kim").json()
    assert follow_up["mcpdb"]["node"] == first["mcpdb"]["node"]  # affinity: the node holding the prefix
    assert follow_up["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert set(recalled) <= set(follow_up["mcpdb"]["memories"])  # still in the prompt, not recalled again


def test_a_turn_that_left_the_window_is_recalled_through_the_official_client(llm_cluster: LocalCluster) -> None:
    """A session whose first turn gives a flight number, then enough small talk to push it out of a
    2,048-token window: asked about the flight through the openai client, the node recalls that turn
    (``mcpdb.earlier_turns``) in front of the question, and the recorded turn keeps it."""
    openai = pytest.importorskip("openai")
    urls, model, session = llm_cluster.urls(), _model(llm_cluster), f"s-{uuid.uuid4().hex[:8]}"
    small_talk = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Small talk {i}: the weather stayed mild " * 6}
        for i in range(60)
    ]
    early = [
        {"role": "user", "content": "My flight to Lisbon is TP1351, leaving on the twelfth."},
        {"role": "assistant", "content": "Noted."},
    ]
    httpx.post(
        f"{urls[0]}/v1/namespaces/{NS}/sessions/{session}/turns", json={"turns": early + small_talk}, timeout=10
    ).raise_for_status()
    api = openai.OpenAI(base_url=urls[1] + "/v1", api_key="unused", max_retries=0)
    reply = api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Which flight do I take to Lisbon?"}],
        max_tokens=8,
        temperature=0,
        extra_body={"namespace": NS, "session_id": session},
    )
    provenance = reply.model_extra["mcpdb"]
    assert provenance["omitted"]["turns"] > 0 and provenance["earlier_turns"] == [0]
    recorded = _turns(urls[0], session)[-2]
    assert recorded["content"] == "Which flight do I take to Lisbon?" and recorded["metadata"]["turns"] == [0]
    assert 'the user said: "My flight to Lisbon is TP1351' in recorded["metadata"]["recalled"]


def test_the_leader_embeds_memories_through_the_log_and_every_node_ranks_them_alike(
    llm_cluster: LocalCluster,
) -> None:
    """Writes commit first; the leader's embedder adds each version's vector through the log; vector
    and hybrid search then answer identically on every node (one model, one vector per version)."""
    facts = {
        "f-tea": "Ada drinks green tea every morning",
        "f-chess": "Bo plays chess at the club on Sundays",
        "f-bike": "Cy rides a bicycle to work",
    }
    with httpx.Client(timeout=30) as http:
        _wait_embedders(http, llm_cluster)
        for context_id, fact in facts.items():
            body = {"kind": "memory", "facts": [fact], "user_id": None}
            http.put(f"{llm_cluster.urls()[0]}/v1/namespaces/embed/contexts/{context_id}", json=body).raise_for_status()

        def answers(mode: str) -> list[dict[str, object]]:
            found = []
            for url in llm_cluster.urls():
                response = http.get(f"{url}/v1/namespaces/embed/search", params={"q": "a board game", "mode": mode})
                assert response.status_code == 200, response.text
                found.append(response.json())
            return found

        deadline = time.monotonic() + 120
        while any(answer["unembedded"] for answer in answers("vector")):
            assert time.monotonic() < deadline, "the leader did not embed the memories"
            time.sleep(0.5)
        for mode in ("vector", "hybrid"):
            first, *others = answers(mode)
            ranked = [(r["id"], r["score"]) for r in first["results"]]  # type: ignore[attr-defined]
            assert len(ranked) == 3 and first["vector"] == "used"
            assert all([(r["id"], r["score"]) for r in other["results"]] == ranked for other in others)  # type: ignore[attr-defined]
        empty = http.get(f"{llm_cluster.urls()[0]}/v1/namespaces/embed/search", params={"q": "tea", "kind": "task"})
        assert empty.json()["vector"] == "skipped" and empty.json()["results"] == []  # nothing to rank: not embedded
        status = [httpx.get(url + "/v1/node", timeout=5).json()["inference"] for url in llm_cluster.urls()]
        assert all(node["embedding"] == "ready" for node in status)
        assert sum(node["embedded"] for node in status) >= 3


def test_killing_the_serving_node_mid_stream_retries_elsewhere_without_a_duplicate_turn(
    llm_cluster: LocalCluster,
) -> None:
    urls, model, session = llm_cluster.urls(), _model(llm_cluster), f"s-{uuid.uuid4().hex[:8]}"
    opening = _chat(urls[0], model, session, "Hello.").json()
    holder = opening["mcpdb"]["node"]  # affinity sends the session's next turn here again
    entry = next(spec for spec in llm_cluster.layout.nodes if spec.node_id != holder)
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 120,
        "temperature": 0,
        "namespace": NS,
        "session_id": session,
        "messages": [{"role": "user", "content": "Count from one to one hundred in words, one per line."}],
    }
    streamed, final, killed = "", None, False
    with httpx.stream(
        "POST", entry.url + "/v1/chat/completions", json=body, timeout=60, headers={"Idempotency-Key": "kill-1"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-mcpdb-node"] == holder
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            assert "error" not in chunk, chunk
            streamed += chunk["choices"][0]["delta"].get("content") or ""
            if streamed and not killed:
                llm_cluster.kill(holder)
                killed = True
            if chunk.get("usage"):
                final = chunk
    assert killed and final is not None
    assert final["mcpdb"]["node"] != holder and final["mcpdb"]["attempts"] == 2
    survivors = [spec.url for spec in llm_cluster.layout.nodes if spec.node_id != holder]
    turns = _turns(survivors[0], session)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    if not final["mcpdb"]["diverged"]:
        assert turns[-1]["content"] == streamed
    assert sum(1 for t in turns if t["metadata"].get("idempotency_key") == "kill-1") == 2


def test_metrics_show_raft_store_and_inference_with_sane_values(llm_cluster: LocalCluster) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    # An earlier test may have killed a node: talk to, and scrape, the running ones.
    running = [spec.url for spec in llm_cluster.layout.nodes if llm_cluster.running(spec.node_id)]
    model, session = _model(llm_cluster), f"s-{uuid.uuid4().hex[:8]}"
    # Three turns: the session's node may be busier than another by more than the shed threshold
    # (an earlier test's request still decoding) at one turn, and that turn goes elsewhere.
    for _ in range(3):
        assert _chat(running[0], model, session, "Metrics?").status_code == 200
    for url in running:  # a scrape counts itself after rendering: the second one shows the first
        httpx.get(url + "/metrics", timeout=5)
    scraped = {}
    for url in running:
        response = httpx.get(url + "/metrics", timeout=5)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        scraped[url] = {
            sample.name + str(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }
    for samples in scraped.values():
        assert samples["mcpdb_raft_term[]"] >= 1
        assert samples["mcpdb_raft_applied_index[]"] <= samples["mcpdb_raft_commit_index[]"]
        assert samples["mcpdb_raft_apply_lag[]"] >= 0
        assert samples["mcpdb_store_contexts[('kind', 'instruction')]"] >= 1
        assert samples["mcpdb_store_contexts[('kind', 'session')]"] >= 1
        assert samples["mcpdb_inference_slots[]"] == 1 and samples["mcpdb_inference_weight[]"] > 0
    roles = [s["mcpdb_raft_role[('role', 'leader')]"] for s in scraped.values()]
    assert sorted(roles)[-1] == 1.0
    assert sum(s["mcpdb_inference_ttft_seconds_count[]"] for s in scraped.values()) >= 2
    leader = max(scraped.values(), key=lambda s: s["mcpdb_raft_role[('role', 'leader')]"])
    assert sum(v for k, v in leader.items() if k.startswith("mcpdb_scheduler_assignments_total")) >= 1
    assert leader.get("mcpdb_scheduler_decisions_total[('reason', 'affinity')]", 0) >= 1
    assert 0 < leader["mcpdb_scheduler_affinity_hit_ratio[]"] <= 1
    for samples in scraped.values():
        assert samples["mcpdb_raft_leader_changes_total[]"] >= 1
        assert samples["mcpdb_raft_snapshots_written_total[]"] >= 0
        assert samples["mcpdb_raft_snapshots_installed_total[]"] >= 0
    chats = "[('method', 'POST'), ('route', '/v1/chat/completions'), ('status', '200')]"
    entry = scraped[running[0]]
    assert entry[f"mcpdb_http_request_duration_seconds_count{chats}"] >= 2
    assert entry[f"mcpdb_http_request_duration_seconds_sum{chats}"] > 0
    scrape_route = "[('le', '+Inf'), ('method', 'GET'), ('route', '/metrics'), ('status', '200')]"
    assert all(s[f"mcpdb_http_request_duration_seconds_bucket{scrape_route}"] >= 1 for s in scraped.values())


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (scripts/setup installs it as root)")
def test_dashboard_renders_the_cluster_in_a_browser(llm_cluster: LocalCluster, tmp_path: Path) -> None:
    running = [spec for spec in llm_cluster.layout.nodes if llm_cluster.running(spec.node_id)]
    url = running[0].url
    model, session = _model(llm_cluster), f"s-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        httpx.get(url + "/v1/overview", timeout=10)  # two samples, so rates exist
        assert _chat(url, model, session, "Dashboard?").status_code == 200
    dom = rendered_dom(url + "/ui")
    assert 'data-ready="true"' in dom, dom[-2000:]
    rows = re.findall(r"<tr><td>(n\d)</td><td><span class=\"role (\w+)\">", dom)
    assert {node for node, _ in rows} >= {spec.node_id for spec in running}
    assert [role for _, role in rows].count("leader") == 1
    assert model in dom and "<polyline" in dom
    assert _chat(url, model, session, "Again?").status_code == 200  # an assignment for the bars' interval
    pixels = screenshot(url + "/ui", tmp_path / "dashboard.png")
    assert pixels.shape == (900, 1280, 3)
    assert pixels_of(pixels, "#4ade80") > 50  # the leader's badge (and the tokens/s line)
    assert pixels_of(pixels, "#38bdf8") > 50  # the requests/s line and the title
    assert pixels_of(pixels, "#a78bfa") > 200  # assignment bars: the leader assigned the chats
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a page, not a blank or error screen


def test_mcp_chat_tool_generates_through_the_scheduler_and_records_the_turns(llm_cluster: LocalCluster) -> None:
    import asyncio

    from tests.mcp_helpers import mcp_session

    running = [spec.url for spec in llm_cluster.layout.nodes if llm_cluster.running(spec.node_id)]
    session = f"mcp-{uuid.uuid4().hex[:8]}"

    async def run() -> dict:
        async with mcp_session(running[-1]) as client:
            result = await client.call_tool(
                "chat", {"namespace": NS, "session_id": session, "message": "Say hello.", "max_tokens": 8}
            )
            assert not result.is_error, result.content
            return result.structured_content

    reply = asyncio.run(run())
    assert reply["node"] in {spec.node_id for spec in llm_cluster.layout.nodes}
    assert reply["usage"]["completion_tokens"] >= 1
    turns = _turns(running[0], session)
    assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["content"] == reply["reply"]
