"""``mcpdb up --demo``: a short conversation that shows where each turn ran and how fast.

An instruction and a user profile go into the store; three user turns go
through ``/v1/chat/completions`` with a session, each through a different
entry node. Each reply names the node that generated it and its time to
first token: the first turn pays for the whole prompt, the follow-ups land
on the same node (context affinity) and reuse its KV cache.
"""

from __future__ import annotations

import uuid

from rich.table import Table

from mcpdb.cli.common import console
from mcpdb.client import Client, chat_body

NAMESPACE = "demo"
QUESTIONS = ("What is a context database?", "Why replicate it with Raft?", "Summarise that in one line.")


def run_demo(nodes: dict[str, str], token: str | None = None, max_tokens: int = 48) -> None:
    """Three turns, each entering through the next node (``nodes``: node id -> URL), named by id in the table
    so it reads whole at any terminal width (the URLs are printed above it)."""
    session = f"demo-{uuid.uuid4().hex[:6]}"
    urls = list(nodes.values())
    names = {url: node_id for node_id, url in nodes.items()}
    with Client(urls, token=token, deadline=60.0) as http:
        http.put(
            NAMESPACE,
            "assistant",
            {
                "kind": "instruction",
                "role": "a concise assistant for engineers",
                "domains": ["databases"],
                "text": "Answer plainly, in at most two sentences.",
            },
        )
        http.put(
            NAMESPACE,
            "ada",
            {
                "kind": "profile",
                "name": "Ada",
                "preferences": {"tone": "direct"},
                "goals": ["understand distributed systems"],
            },
        )
        model = http.models()[0]
        table = Table(
            "turn",
            "entry node",
            "served by",
            "first token",
            "cached prompt",
            "reply",
            title=f"demo: session {NAMESPACE}/{session} on {model}",
        )
        for turn, question in enumerate(QUESTIONS, start=1):
            entry = urls[(turn - 1) % len(urls)]
            with Client(entry, token=token, deadline=60.0) as via_entry:
                reply = via_entry.chat(
                    chat_body(
                        [{"role": "user", "content": question}],
                        model,
                        namespace=NAMESPACE,
                        session_id=session,
                        user_id="ada",
                        max_tokens=max_tokens,
                        temperature=0.7,
                    )
                )
            meta, usage = reply["mcpdb"], reply["usage"]
            console.print(f"[bold]you:[/] {question}")
            console.print(f"[bold]{meta['node']}:[/] {reply['choices'][0]['message']['content'].strip()}")
            table.add_row(
                str(turn),
                names[entry],
                meta["node"],
                f"{meta['ttft_s']:.3f} s",
                f"{usage['prompt_tokens_details']['cached_tokens']}/{usage['prompt_tokens']}",
                f"{usage['completion_tokens']} tokens",
            )
        console.print(table)
        stored = http.get(NAMESPACE, session)
        console.print(
            f"the session now holds {stored['turn_count']} turns (version {stored['version']}); "
            f"read it back with: mcpdb ctx get {NAMESPACE} {session}"
        )
