"""Stored context + the request's messages -> one prompt that fits the model's window.

Order, most stable first, so that a session's next turn shares the longest
possible prefix with its last one (that prefix is what the KV cache keeps):

    system:  instructions, guardrails, task, user profile, memory
    turns:   the session's stored turns, oldest first
    new:     the request's own messages (the new user message)

Budget is n_ctx minus max_tokens, counted with the model's own tokenizer.
When over budget, the oldest turns go first, in chunks of ``turn_chunk``
(dropping one turn per request would shift the prompt every turn and defeat
KV reuse; dropping in chunks keeps it byte-stable for several turns), then
memory, then the profile, then the task. Instructions, guardrails and the
request's own messages are never dropped: if they alone do not fit, the
request is refused. The result says what was left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcpdb.errors import ContextTooLarge
from mcpdb.inference.prompt_format import ChatFormat


@dataclass(frozen=True)
class StoredContext:
    """What the store holds for one request, already chosen (see context_gather)."""

    instructions: list[dict[str, Any]] = field(default_factory=list)
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    task: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    memories: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Assembled:
    messages: list[dict[str, str]]
    prompt: str
    tokens: list[int]  # the prompt in the model's tokens, as generation takes it
    omitted: dict[str, int]  # turns, memories, profile, task: how many of each were left out
    kept_turns: int

    @property
    def prompt_tokens(self) -> int:
        return len(self.tokens)


def _instruction_text(instruction: dict[str, Any]) -> str:
    lines = [f"You are {instruction['role']}."]
    if instruction.get("domains"):
        lines.append(f"Specialised in: {', '.join(instruction['domains'])}.")
    lines.append(instruction["text"])
    if instruction.get("style"):
        lines.append(f"Style: {instruction['style']}")
    return "\n".join(lines)


def _guardrail_text(guardrail: dict[str, Any]) -> str:
    lines = ["Rules you must follow:"] + [f"- {rule}" for rule in guardrail["rules"]]
    if guardrail.get("deny_topics"):
        lines.append(f"Do not discuss: {', '.join(guardrail['deny_topics'])}.")
    return "\n".join(lines)


def _task_text(task: dict[str, Any]) -> str:
    return f"Current task ({task['domain']}): {task['goal']}"


def _profile_text(profile: dict[str, Any]) -> str:
    lines = [f"About the user{' (' + profile['name'] + ')' if profile.get('name') else ''}:"]
    for key, value in sorted(profile.get("preferences", {}).items()):
        lines.append(f"- prefers {key}: {value}")
    for goal in profile.get("goals", []):
        lines.append(f"- goal: {goal}")
    return "\n".join(lines)


def _memory_text(memories: list[dict[str, Any]]) -> str:
    return "\n".join(["What you remember:"] + [f"- {fact}" for memory in memories for fact in memory["facts"]])


def _turn_message(turn: dict[str, Any]) -> dict[str, str]:
    """Stored turns become user/assistant messages; other roles are labelled inside a user turn
    (a system message mid-conversation would move to the top in most formats and break the prefix)."""
    if turn["role"] in ("user", "assistant"):
        return {"role": turn["role"], "content": turn["content"]}
    return {"role": "user", "content": f"[{turn['role']}] {turn['content']}"}


def _messages(
    stored: StoredContext,
    new_messages: list[dict[str, str]],
    drop_turns: int,
    with_memory: bool,
    with_profile: bool,
    with_task: bool,
) -> list[dict[str, str]]:
    sections = [_instruction_text(i) for i in stored.instructions]
    sections += [_guardrail_text(g) for g in stored.guardrails]
    if with_task and stored.task:
        sections.append(_task_text(stored.task))
    if with_profile and stored.profile:
        sections.append(_profile_text(stored.profile))
    if with_memory and stored.memories:
        sections.append(_memory_text(stored.memories))
    sections += [m["content"] for m in new_messages if m["role"] == "system"]
    messages = [{"role": "system", "content": "\n\n".join(sections)}] if sections else []
    messages += [_turn_message(turn) for turn in stored.turns[drop_turns:]]
    messages += [_turn_message(m) for m in new_messages if m["role"] != "system"]
    return messages


def assemble(
    stored: StoredContext,
    new_messages: list[dict[str, str]],
    chat_format: ChatFormat,
    tokenize: Callable[[str], list[int]],
    budget: int,
    turn_chunk: int = 4,
) -> Assembled:
    """The fullest prompt within ``budget`` tokens; raises ContextTooLarge when even the minimum
    (instructions, guardrails, new messages) does not fit."""
    turn_count = len(stored.turns)
    drops = list(range(0, turn_count, turn_chunk)) + [turn_count]
    plans = [(d, True, True, True) for d in drops]  # first the turns go, oldest first
    plans += [(turn_count, False, True, True), (turn_count, False, False, True), (turn_count, False, False, False)]
    for drop, with_memory, with_profile, with_task in plans:
        messages = _messages(stored, new_messages, drop, with_memory, with_profile, with_task)
        prompt = chat_format.render(messages)
        tokens = tokenize(prompt)
        if len(tokens) <= budget:
            omitted = {
                "turns": drop,
                "memories": 0 if with_memory else len(stored.memories),
                "profile": int(stored.profile is not None and not with_profile),
                "task": int(stored.task is not None and not with_task),
            }
            return Assembled(messages, prompt, tokens, omitted, turn_count - drop)
    raise ContextTooLarge(
        f"instructions, guardrails and the new messages take {len(tokens)} tokens, "
        f"more than the {budget} the model's window leaves after max_tokens"
    )
