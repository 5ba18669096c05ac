"""Follow-ups' cached share on a real node, with the model's own replies (``mcpdb bench retrieval``).

``recall_chats`` measures the share with the node's assembly and tokenizer, and a fixed one-line
reply after every turn. Here the same conversations run on a real node (the bundled chat model, the
default embedding model, one slot, a node's defaults otherwise), through the official ``openai``
client with a session: the model writes each reply (up to ``reply_tokens``, by default
``REPLY_TOKENS``, the length the assistant's guardrail asks for), the session records it, and the
share is what the node reports, ``cached_tokens / prompt_tokens`` of each chat's usage: what
llama.cpp's KV cache really held.

Each user's store holds the assistant's instruction and guardrail, the user's profile and the
user's memories (the corpus's 80 and ``filler`` small talk); the conversation is ``recall_chats``'s:
four subjects, each asked and then followed up. Then one session of small talk long enough to outgrow
the window (``long_exchanges``): the share of each prompt past the window that the cache held, which
the window's drop points decide (``assembly.drop_points``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.freshness import start_model_cluster
from benchmarks.memory_corpus import filler, memories, question, user_id
from benchmarks.recall_chats import CONVERSATION, GUARDRAIL, INSTRUCTION, profile, summary

NAMESPACE = "live"
REPLY_TOKENS = 128  # about the 80 words the guardrail allows
BATCH = 100


def _load(http: httpx.Client, url: str, users: int, extra: int) -> None:
    """The assistant's contexts, then each user's profile and memories; returns once every memory has
    its vector (the leader embeds them through the log after the writes commit)."""
    base = f"{url}/v1/namespaces/{NAMESPACE}"
    http.put(f"{base}/contexts/assistant", json=INSTRUCTION).raise_for_status()
    http.put(f"{base}/contexts/rules", json=GUARDRAIL).raise_for_status()
    held = list(memories(users))
    for number in range(users):
        http.put(f"{base}/contexts/{user_id(number)}", json=profile(user_id(number))).raise_for_status()
        held += filler(user_id(number), extra)
    for at in range(0, len(held), BATCH):
        ops = [
            {"op": "put", "id": m.id, "context": {"kind": "memory", "facts": [m.text], "user_id": m.user_id}}
            for m in held[at : at + BATCH]
        ]
        http.post(f"{base}/batch", json={"ops": ops}).raise_for_status()
    deadline = time.monotonic() + 600
    params = {"q": "note", "mode": "vector", "kind": "memory"}
    while http.get(f"{base}/search", params=params).json()["unembedded"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the node did not embed the memories within 600 s")
        time.sleep(1.0)


def _chat(api: Any, model: str, reply_tokens: int, text: str, **mcpdb: str) -> tuple[Any, dict[str, Any]]:
    """One chat through the official client: its usage, and the node's provenance (``mcpdb`` in the
    reply). ``mcpdb`` names the namespace's session and user, passed as the API's extra fields."""
    reply = api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=reply_tokens,
        temperature=0,
        extra_body={"namespace": NAMESPACE, **mcpdb},
    )
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None, "a node reports its usage"
    return usage, reply.model_extra["mcpdb"]


def _cached_share(usage: Any) -> float:
    return float(usage.prompt_tokens_details.cached_tokens or 0) / usage.prompt_tokens


def _conversations(api: Any, model: str, users: int, reply_tokens: int) -> dict[str, list[float]]:
    shares: dict[str, list[float]] = {"follow_up": [], "new_subject": [], "prompt_tokens": [], "reply_tokens": []}
    for number in range(users):
        session = f"live-{uuid.uuid4().hex[:12]}"
        for turn, (topic, style) in enumerate(CONVERSATION):
            asked = question(number, topic, style)
            usage, _ = _chat(api, model, reply_tokens, asked.text, session_id=session, user_id=asked.user_id)
            shares["prompt_tokens"].append(usage.prompt_tokens)
            shares["reply_tokens"].append(usage.completion_tokens)
            if turn:
                shares["follow_up" if style == "direct" else "new_subject"].append(_cached_share(usage))
    return shares


def _long_conversation(api: Any, model: str, exchanges: int, reply_tokens: int) -> dict[str, Any]:
    """One session of ``exchanges`` of small talk, long enough to outgrow the window: how much of each
    prompt past the window the KV cache held (the window drops turns a quarter of itself at a time,
    and a chat whose window moved recomputes all of it)."""
    session, shares = f"long-{uuid.uuid4().hex[:12]}", []
    for said in filler(user_id(0), exchanges):
        usage, provenance = _chat(api, model, reply_tokens, said.text, session_id=session)
        if provenance["omitted"]["turns"]:  # past the window
            shares.append(_cached_share(usage))
    return {"exchanges": exchanges, "past_window": len(shares), **(summary(shares) if shares else {})}


def measure(users: int, extra: int, reply_tokens: int = REPLY_TOKENS, long_exchanges: int = 0) -> dict[str, Any]:
    """``users`` users' conversations on one fresh node holding their memories and ``extra`` filler each,
    each reply up to ``reply_tokens``; then one conversation of ``long_exchanges`` (0: none)."""
    import openai

    folder = Path(tempfile.mkdtemp(prefix="mcpdb-bench-live-chats-"))
    cluster = start_model_cluster(folder, 1, [])
    try:
        url = cluster.urls()[0]
        with httpx.Client(timeout=120) as http:
            _load(http, url, users, extra)
            model = http.get(url + "/v1/models").json()["data"][0]["id"]
        api = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        shares = _conversations(api, model, users, reply_tokens)
        long = _long_conversation(api, model, long_exchanges, reply_tokens) if long_exchanges else None
    finally:
        cluster.stop_all()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "users": users,
        "follow_up": summary(shares["follow_up"]),
        "new_subject": summary(shares["new_subject"]),
        "prompt_tokens": sum(shares["prompt_tokens"]) / len(shares["prompt_tokens"]),
        "reply_tokens": sum(shares["reply_tokens"]) / len(shares["reply_tokens"]),
        "long": long,
    }


COLUMNS = (
    "memories per user",
    "users",
    "prompt tokens: mean",
    "reply tokens: mean",
    "follow-ups cached: mean",
    "min",
    "over 90%",
    "new subject: mean",
    "min",
)


def rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [
            held,
            str(r["users"]),
            f"{r['prompt_tokens']:.0f}",
            f"{r['reply_tokens']:.0f}",
            f"{r['follow_up']['mean']:.3f}",
            f"{r['follow_up']['min']:.3f}",
            f"{r['follow_up']['over_90']:.2f}",
            f"{r['new_subject']['mean']:.3f}",
            f"{r['new_subject']['min']:.3f}",
        ]
        for held, r in results.items()
    ]


LONG_COLUMNS = ("exchanges", "chats past the window", "cached: mean", "min", "over 90%")


def long_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [str(r["long"]["exchanges"]), str(r["long"]["past_window"])]
        + ([f"{r['long'][key]:.3f}" for key in ("mean", "min", "over_90")] if r["long"]["past_window"] else ["-"] * 3)
        for r in results.values()
        if r.get("long")
    ]
