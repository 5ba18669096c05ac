"""Chats of ``mcpdb bench retrieval``: did the fact a question needs reach the prompt, at what cost, and
how much of each follow-up's prompt the KV cache already holds.

The prompts are built by the node's own code (``gather`` with the chat's ``recall_query``, then
``assemble``) with the bundled model's tokenizer and chat format, at a node's defaults (a 4,096-token
window, 256 tokens for the reply, ``--memory-budget`` 256), for users holding their own memories alone
and beside some hundreds of small talk (``memory_corpus.filler``: 400 by default), as a long-time
user's memory does. Beside
it, the all-or-nothing assembly mcpdb had before: every memory in the system prompt if the whole
prompt fits the window, none if not.

The cache figure follows one conversation per user through eight turns (two questions of each of
four topics: a subject, then a follow-up on it); after each turn the slot's KV cache holds that
prompt and the reply's tokens, and the next prompt's shared prefix with them is what llama.cpp
reuses (``cached_tokens`` in a chat's usage). Reported apart: follow-ups, whose memories the turn
before mostly recalled already, and turns on a new subject, which recall new ones (the price of
relevance: the alternative, every memory in a system prompt, does not fit the window at 448).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from benchmarks.memory_corpus import STYLES, Memory, filler, memories, question, user_id, user_questions
from benchmarks.stats import percentile

N_CTX = 4096  # a node's --n-ctx default
MAX_TOKENS = 256  # a chat's reply budget when the request names none
MEMORY_BUDGET = 256  # a node's --memory-budget default
CONVERSATION = [(topic, style) for topic in range(4) for style in ("paraphrase", "direct")]
REPLY = "Noted: I will keep that in mind for the rest of our conversation."
# Exchanges of small talk after a user told every memory (``Chats.told_earlier``): enough to push most
# of the told facts out of the 4,096-token window, not so many that the small talk alone outgrows it
# (the window drops a quarter of itself at a time, so it may keep as little as three quarters).
TOLD_SMALL_TALK = 60
INSTRUCTION = {
    "kind": "instruction",
    "role": "a personal assistant who remembers what the user told it",
    "text": "Answer briefly and use what you remember about the user when it matters. "
    "If you do not know something about the user, say so instead of guessing.",
}
# What such an assistant keeps beside the memories, as mcpdb's kinds hold it: its rules, and each user's
# profile (gather reads the profile whose id is the chat's user_id). They open every prompt, as they
# would in an application; the follow-ups' cached share is measured with them in place.
GUARDRAIL = {
    "kind": "guardrail",
    "rules": [
        "Never suggest a dose of any medicine; refer the user to their doctor or pharmacist.",
        "Never repeat one user's memories to another user.",
        "Keep answers under 80 words unless the user asks for more.",
    ],
    "deny_topics": ["politics", "gambling"],
}


def profile(user: str) -> dict[str, Any]:
    """A user's profile, the same shape for every user."""
    return {
        "kind": "profile",
        "name": user,
        "preferences": {"tone": "warm and brief", "units": "metric", "dates": "day month year"},
        "goals": ["keep track of appointments and health", "plan the family's weekends"],
    }


def held_by(users: int, extra: int) -> list[Memory]:
    """What the chat corpus holds: each user's memories and ``extra`` of small talk."""
    held = list(memories(users))
    for number in range(users):
        held += filler(user_id(number), extra)
    return held


class Chats:
    """Prompts as a node assembles them over one store (``ContextStore``) loaded with ``held_by``."""

    def __init__(self, store: Any, namespace: str, model_path: str, vector_of: Callable[[str], bytes]) -> None:
        from llama_cpp import Llama

        from mcpdb.inference.prompt_format import GemmaFormat
        from mcpdb.inference.prompt_tokens import LlamaTokenizer

        self._store, self._namespace, self._vector_of = store, namespace, vector_of
        self._vocab = Llama(model_path=model_path, vocab_only=True, verbose=False)
        self._tokenizer = LlamaTokenizer(self._vocab)
        self._format = GemmaFormat()

    def assembled(self, user_id: str, text: str, turns: list[dict[str, Any]]) -> Any:
        from mcpdb.inference.assembly import assemble
        from mcpdb.inference.gather import gather, recall_query

        recall = recall_query(text, self._vector_of(text), user_id)
        stored = gather(
            self._store,
            self._namespace,
            applied_at_least=0,
            session_id=None,
            user_id=user_id,
            task_id=None,
            recall=recall,
        ).stored
        return assemble(
            dataclasses.replace(stored, turns=turns),
            [{"role": "user", "content": text}],
            self._format,
            self._tokenizer,
            budget=N_CTX - MAX_TOKENS,
            memory_budget=MEMORY_BUDGET,
            window=N_CTX,
        )

    def all_or_nothing(self, user_id: str, text: str, held: list[Memory]) -> tuple[bool, int]:
        """Whether the old assembly put the memories in (all of them, if the prompt fit: at the end of
        the same system prompt), and its tokens."""
        from mcpdb.inference.assembly import StoredContext, assemble
        from mcpdb.inference.prompt_format import render_pieces

        bare = StoredContext(instructions=[INSTRUCTION], guardrails=[GUARDRAIL], profile=profile(user_id))
        asked = [{"role": "user", "content": text}]
        system = assemble(bare, asked, self._format, self._tokenizer, N_CTX, 0).messages[0]["content"]
        lines = ["What you remember:"] + [f"- {m.text}" for m in held if m.user_id == user_id]
        for with_memory in (True, False):
            content = system + ("\n\n" + "\n".join(lines) if with_memory else "")
            pieces = render_pieces(self._format, [{"role": "system", "content": content}, *asked])
            tokens = len(self._tokenizer.prompt(pieces))
            if tokens <= N_CTX - MAX_TOKENS:
                return with_memory, tokens
        raise AssertionError("the system prompt alone fits the window")

    def reached(self, users: int, held: list[Memory]) -> dict[str, float]:
        """Over every question of ``users`` users: how often its fact reached the prompt, and the mean
        prompt tokens, by retrieval and by all-or-nothing."""
        found = {"recall": 0, "all_or_nothing": 0}
        tokens = {"recall": 0, "all_or_nothing": 0}
        asked = [q for number in range(users) for q in user_questions(number)]
        for q in asked:
            assembled = self.assembled(q.user_id, q.text, [])
            found["recall"] += q.answer_id in assembled.memories
            tokens["recall"] += assembled.prompt_tokens
            fits, old_tokens = self.all_or_nothing(q.user_id, q.text, held)
            found["all_or_nothing"] += fits
            tokens["all_or_nothing"] += old_tokens
        return {
            **{f"reached_{name}": count / len(asked) for name, count in found.items()},
            **{f"prompt_tokens_{name}": count / len(asked) for name, count in tokens.items()},
        }

    def told_earlier(self, users: int, small_talk: int) -> dict[str, dict[str, float]]:
        """Each of ``users`` users told the assistant everything (their memories' texts, as user turns
        of one session, each answered), then made ``small_talk`` exchanges, and asks every question:
        the facts live only in the conversation (the user id asking holds no memories). By question
        style: the share of questions whose fact had left the window, and how often the fact reached
        the prompt, with the turn recall and without it (only if its turn was still kept)."""
        styles = {style: {"asked": 0, "out_of_window": 0, "kept": 0, "recalled": 0} for style in STYLES}
        for number in range(users):
            told = [m for m in memories(users) if m.user_id == user_id(number)]
            turns: list[dict[str, Any]] = []
            for memory in told:
                turns += [{"role": "user", "content": memory.text}, {"role": "assistant", "content": REPLY}]
            first_small_talk = len(turns)
            for memory in filler(user_id(number), small_talk):
                turns += [{"role": "user", "content": memory.text}, {"role": "assistant", "content": REPLY}]
            position = {memory.id: 2 * i for i, memory in enumerate(told)}
            for asked in user_questions(number):
                assembled = self.assembled(f"{asked.user_id}-talk", asked.text, turns)
                counts = styles[asked.style]
                counts["asked"] += 1
                dropped = assembled.omitted["turns"]
                assert dropped <= first_small_talk, "the small talk alone outgrew the window"
                out = position[asked.answer_id] < dropped
                counts["out_of_window"] += out
                counts["kept"] += not out
                counts["recalled"] += out and position[asked.answer_id] in assembled.recalled_turns
        return {
            style: {
                "asked": counts["asked"],
                "out_of_window": counts["out_of_window"] / counts["asked"],
                "reached_without": counts["kept"] / counts["asked"],
                "reached_with_turn_recall": (counts["kept"] + counts["recalled"]) / counts["asked"],
            }
            for style, counts in styles.items()
            if counts["asked"]
        }

    def cached_shares(self, users: int) -> dict[str, list[float]]:
        """Each later turn's share of prompt tokens the KV cache already held, over ``users``
        conversations: a follow-up on the subject of the turn before, and a turn on a new subject; and
        for the follow-ups, the tokens the cache did not hold (the new message, and what it recalled
        that no earlier turn had) and the memories recalled anew."""
        from mcpdb.inference.prompt_format import Piece

        shares: dict[str, list[float]] = {"follow_up": [], "new_subject": [], "uncached": [], "recalled_anew": []}
        # what generation appended to the cache: the reply, then the token that ended it
        reply = self._tokenizer.prompt([Piece(REPLY, is_content=True), Piece("<end_of_turn>", is_content=False)])[1:]
        for number in range(users):
            turns: list[dict[str, Any]] = []
            cache: list[int] = []
            for topic, style in CONVERSATION:
                asked = question(number, topic, style)
                assembled = self.assembled(asked.user_id, asked.text, turns)
                if cache:
                    shared = next(
                        (i for i, (a, b) in enumerate(zip(cache, assembled.tokens, strict=False)) if a != b),
                        min(len(cache), len(assembled.tokens)),
                    )
                    shares["follow_up" if style == "direct" else "new_subject"].append(shared / assembled.prompt_tokens)
                    if style == "direct":
                        shares["uncached"].append(assembled.prompt_tokens - shared)
                        shares["recalled_anew"].append(len(assembled.recalled_ids))
                cache = assembled.tokens + reply
                recall = {"recalled": assembled.recalled, "memories": assembled.recalled_ids}
                turns += [
                    {"role": "user", "content": asked.text, "metadata": recall if assembled.recalled else {}},
                    {"role": "assistant", "content": REPLY},
                ]
        return shares

    def close(self) -> None:
        self._vocab.close()


def summary(shares: list[float]) -> dict[str, float]:
    return {
        "mean": sum(shares) / len(shares),
        "min": min(shares),
        "p10": percentile(shares, 0.1) or 0.0,
        "over_90": sum(1 for share in shares if share > 0.9) / len(shares),
    }
