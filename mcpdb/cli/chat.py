"""``mcpdb chat``: one message to a session, the reply streamed as it is generated."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mcpdb.cli.common import TokenOption, UrlOption, client, console
from mcpdb.cli.errors import CliError
from mcpdb.client import chat_body


def describe_reply(final: dict[str, Any]) -> str:
    """One line on where and how fast a reply was made (node, time to first token, tokens)."""
    meta, usage = final.get("mcpdb") or {}, final.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    ttft = meta.get("ttft_s")
    parts = [
        f"node {meta.get('node')}",
        f"first token {ttft:.3f} s" if ttft is not None else "replayed",
        f"{usage.get('completion_tokens', 0)} tokens",
        f"prompt {usage.get('prompt_tokens', 0)} ({cached} cached)",
    ]
    if meta.get("memories"):
        parts.append(f"{len(meta['memories'])} memories")
    if meta.get("earlier_turns"):
        parts.append(f"{len(meta['earlier_turns'])} earlier turns recalled")
    omitted = {k: v for k, v in (meta.get("omitted") or {}).items() if v}
    if omitted:
        parts.append("left out: " + ", ".join(f"{v} {k}" for k, v in omitted.items()))
    if (meta.get("attempts") or 1) > 1:
        parts.append(f"{meta['attempts']} attempts")
    return " · ".join(parts)


def chat(
    namespace: str,
    session_id: Annotated[str, typer.Argument(metavar="SESSION")],
    message: str,
    user: Annotated[str | None, typer.Option(help="User id whose profile applies.")] = None,
    task: Annotated[str | None, typer.Option(help="Task id (its domain routes the request).")] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: the first the cluster serves).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 0.7,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Send MESSAGE to SESSION in NAMESPACE and stream the reply; both are appended to the session."""
    if max_tokens < 1:
        raise CliError("--max-tokens must be at least 1")
    if not message.strip():
        raise CliError("the message is empty")
    with client(url, token, deadline=30.0) as http:
        if model is None:
            served = http.models()
            if not served:
                raise CliError("no node serves a model yet (still loading, or started with --no-inference)")
            model = served[0]
        body = chat_body(
            [{"role": "user", "content": message}],
            model,
            namespace=namespace,
            session_id=session_id,
            user_id=user,
            task_id=task,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        final: dict[str, Any] = {}
        for chunk in http.chat_stream(body):
            for choice in chunk.get("choices", []):
                console.print(
                    choice.get("delta", {}).get("content") or "", end="", markup=False, highlight=False, soft_wrap=True
                )
            if "usage" in chunk:
                final = chunk
    console.print()
    console.print(f"[dim]{describe_reply(final)}[/]")
