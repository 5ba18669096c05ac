"""Stored context + the request's messages -> one prompt that fits the model's window.

Order, most stable first, so that a session's next turn shares the longest
possible prefix with its last one (that prefix is what the KV cache keeps):

    system:  instructions, guardrails, task, user profile
    turns:   the session's stored turns, oldest first, each user turn with what was recalled for it
    new:     the request's own messages, the last user message after what is recalled for it now

Memories are chosen, not dumped: gather ranks the user's memories by the new
user message (a hybrid search, ``mcpdb.store.search``), and the best that fit
``memory_budget`` tokens are recalled in front of that message, except those a
kept turn already recalled (they still count against the budget). Turns that
left the window are recalled the same way after the memories, in what the
budget leaves: those sharing a word with the new message, best first
(``turn_recall``). The recall is kept with the turn when the session
records it (``recalled`` in the turn's metadata), and a stored turn renders
with its recall exactly as it was rendered new: the system prompt never
changes with what a message asked, and each turn's prompt starts with the
whole of the last one, so the KV cache keeps everything but the new message.

Budget is n_ctx minus max_tokens, counted with the model's own tokenizer, which reads
control tokens only in the chat format's own text (``prompt_tokens``).
When over budget, the oldest turns go first, in chunks of about a quarter of
the window (``drop_points``: dropping one turn per request would shift the
prompt every turn and defeat KV reuse; a chunk of four turns shifted it every
second exchange, each time recomputing the whole window; a quarter of it keeps
the prompt byte-stable for the next quarter's worth of conversation), then
the new recall, then the profile, then the task. Instructions, guardrails and
the request's own messages are never dropped: if they alone do not fit, the
request is refused. The result says what was left out and which memories the
prompt holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mcpdb.errors import ContextTooLarge
from mcpdb.inference import turn_recall
from mcpdb.inference.prompt_format import ChatFormat, render_pieces
from mcpdb.inference.prompt_tokens import Tokenizer

RECALLED_TURN_CANDIDATES = 16  # turns out of the window ranked per request; the budget takes what fits
# A window drops turns this share of itself at a time (see ``drop_points``).
DROP_SHARE = 4
_LETTERS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SPACES = b" \t\n\r\x0b\x0c"


@dataclass(frozen=True)
class StoredContext:
    """What the store holds for one request, already chosen (see gather)."""

    instructions: list[dict[str, Any]] = field(default_factory=list)
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    task: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    memories: list[dict[str, Any]] = field(default_factory=list)  # the candidates, most relevant first
    memories_held: int = 0  # how many memories the user and nobody hold in the namespace
    turns: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Assembled:
    messages: list[dict[str, str]]
    prompt: str
    tokens: list[int]  # the prompt in the model's tokens, as generation takes it
    omitted: dict[str, int]  # turns, memories, profile, task: how many of each were left out
    kept_turns: int
    memories: list[str]  # ids of the memories the prompt holds: recalled now or by a kept turn
    recalled: str  # what was recalled in front of the new user message ("" for nothing): the turn keeps it
    recalled_ids: list[str]  # the memories ``recalled`` holds
    # Positions in the session of the turns out of the window whose words the prompt holds: recalled
    # now (``recalled_turns``, which the turn keeps) or by a kept turn.
    earlier_turns: list[int] = field(default_factory=list)
    recalled_turns: list[int] = field(default_factory=list)

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


def _memory_line(memory: dict[str, Any]) -> str:
    return "\n".join(f"- {fact}" for fact in memory["facts"])


def _recall_text(lines: list[str]) -> str:
    return "\n".join(["What you remember that may matter here:", *lines]) if lines else ""


def with_recall(recalled: str, content: str) -> str:
    """A user message as the prompt shows it: what was recalled for it first. A new message and the
    same message stored as a turn render alike, byte for byte, which is what keeps the prefix."""
    return f"{recalled}\n\n{content}" if recalled else content


def _turn_message(turn: dict[str, Any]) -> dict[str, str]:
    """Stored turns become user/assistant messages; other roles are labelled inside a user turn
    (a system message mid-conversation would move to the top in most formats and break the prefix)."""
    if turn["role"] == "user":
        return {"role": "user", "content": with_recall(turn.get("metadata", {}).get("recalled", ""), turn["content"])}
    if turn["role"] == "assistant":
        return {"role": "assistant", "content": turn["content"]}
    return {"role": "user", "content": f"[{turn['role']}] {turn['content']}"}


def recalled_by(turns: list[dict[str, Any]], what: str) -> list[Any]:
    """What ``turns`` recalled: memory ids (``what="memories"``) or earlier turns' positions (``"turns"``).
    Turn metadata is anyone's to write through the turns API: a value of another shape there is
    not a recall and is passed over (a chat on that session must not fail)."""
    shape = str if what == "memories" else int
    found = []
    for turn in turns:
        items = turn.get("metadata", {}).get(what)
        if isinstance(items, list):
            found += [item for item in items if isinstance(item, shape) and not isinstance(item, bool)]
    return found


@dataclass(frozen=True)
class _Recall:
    memories: list[str]  # ids
    turns: list[int]  # positions in the session
    text: str


def _recall(
    memories: list[dict[str, Any]],
    earlier: list[tuple[int, str]],
    already: set[str | int],
    tokenizer: Tokenizer,
    budget: int,
) -> _Recall:
    """What to recall now: of the best memories, then the best ``earlier`` turns ((position, line)),
    that fit ``budget`` tokens together (rank order; one that does not fit is passed over for a
    shorter one below it), those not ``already`` in the prompt (memory ids, turn positions). One
    already there still counts against the budget: the budget bounds what is relevant to this
    message, so a follow-up on the same subject recalls little or nothing new (and keeps the KV
    cache's prefix), rather than the next best memories of a subject already covered."""
    memory_ids: list[str] = []
    positions: list[int] = []
    lines: list[str] = []
    spent = len(tokenizer.text(_recall_text(["-"])))
    candidates: list[tuple[str | int, str]] = [(memory["id"], _memory_line(memory)) for memory in memories]
    for key, line in candidates + list(earlier):
        if len(line) > budget * tokenizer.max_token_chars:  # cannot fit: not worth tokenizing (256 KiB turns)
            continue
        cost = len(tokenizer.text(line)) + 1  # the newline between lines
        if spent + cost > budget:
            continue
        spent += cost
        if key not in already:
            if isinstance(key, int):
                positions.append(key)
            else:
                memory_ids.append(key)
            lines.append(line)
    return _Recall(memory_ids, positions, _recall_text(lines))


def estimated_tokens(text: str) -> float:
    """About how many tokens ``text`` is, without the tokenizer (its cost is per character: a session's
    every turn cannot go through it on every chat): a quarter of a token per ASCII letter, one per
    other character that is not a space, one per byte of a non-ASCII character. English comes out
    close (~4 characters a token); digits, punctuation and other scripts, which tokenize denser,
    come out high, so their chunks are smaller rather than larger than meant."""
    raw = text.encode()
    letters = len(raw) - len(raw.translate(None, _LETTERS))
    spaces = len(raw) - len(raw.translate(None, _SPACES))
    return letters / 4 + (len(raw) - letters - spaces)


def drop_points(turns: list[dict[str, Any]], chunk_tokens: int) -> list[int]:
    """How many of ``turns`` a window may drop: 0, then the end of each run of turns of about
    ``chunk_tokens`` (``estimated_tokens`` of each turn as the prompt shows it, its recall included),
    and all of them. A point depends only on the turns before it, so a growing session's points stay
    where they were, and so does its prompt's start until the window has to move on to the next one."""
    points, held = [0], 0.0
    for position, turn in enumerate(turns, 1):
        held += estimated_tokens(_turn_message(turn)["content"])
        if held >= chunk_tokens or position == len(turns):
            points.append(position)
            held = 0.0
    return points


def _last_user(messages: list[dict[str, str]]) -> int | None:
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    return users[-1] if users else None


def _messages(
    stored: StoredContext,
    new_messages: list[dict[str, str]],
    drop_turns: int,
    recalled: str,
    with_profile: bool,
    with_task: bool,
) -> list[dict[str, str]]:
    sections = [_instruction_text(i) for i in stored.instructions]
    sections += [_guardrail_text(g) for g in stored.guardrails]
    if with_task and stored.task:
        sections.append(_task_text(stored.task))
    if with_profile and stored.profile:
        sections.append(_profile_text(stored.profile))
    sections += [m["content"] for m in new_messages if m["role"] == "system"]
    messages = [{"role": "system", "content": "\n\n".join(sections)}] if sections else []
    messages += [_turn_message(turn) for turn in stored.turns[drop_turns:]]
    new = [_turn_message({"role": m["role"], "content": m["content"]}) for m in new_messages if m["role"] != "system"]
    last = _last_user(new)
    if last is not None:
        new[last] = {"role": "user", "content": with_recall(recalled, new[last]["content"])}
    return messages + new


def assemble(
    stored: StoredContext,
    new_messages: list[dict[str, str]],
    chat_format: ChatFormat,
    tokenizer: Tokenizer,
    budget: int,
    memory_budget: int,
    window: int | None = None,
) -> Assembled:
    """The fullest prompt within ``budget`` tokens, recalling memories within ``memory_budget`` of them;
    raises ContextTooLarge when even the minimum (instructions, guardrails, new messages) does not fit.
    Turns are dropped a ``DROP_SHARE`` of ``window`` at a time (the model's context, ``budget`` if not
    given: the budget moves with a request's max_tokens, and drop points that moved would cost the KV
    cache its prefix).

    How many chunks of turns to drop is found by bisection, each try rendering and tokenizing a whole
    prompt (tried one chunk of four turns after another, a session one window past the model's made
    ~30 tries of 6,000 tokens, 2.4 s of the tokenizer per chat on this machine). The prompt shrinks as turns go
    (the earlier turns recalled instead add at most the memory budget back), so the bisection finds
    the fewest drops that fit; were it ever not monotone, it still returns a plan that fits. Should
    that plan fill less than half the budget (a chunk estimated far below its tokens), the turns of
    the chunk before are tried one by one. A try whose kept turns, or whole prompt, hold more
    characters than the budget's tokens could (``Tokenizer.max_token_chars`` each) fails before
    ranking or tokenizing anything: a chat on a session of 6,000 turns of 500 characters took 10.4 s
    of this thread, and takes 0.5 s."""
    turn_count = len(stored.turns)
    last_user = _last_user(new_messages)
    message = new_messages[last_user]["content"] if last_user is not None else ""
    turn_index = turn_recall.TurnIndex(stored.turns)
    over = ""  # what the last try measured, for the error when nothing fits
    most_chars = budget * tokenizer.max_token_chars  # a text longer than this is more than ``budget`` tokens
    kept_chars = [0] * (turn_count + 1)  # [drop]: the characters of the turns kept after dropping ``drop``
    for position in range(turn_count - 1, -1, -1):
        kept_chars[position] = kept_chars[position + 1] + len(stored.turns[position]["content"])

    def attempt(drop: int, with_memory: bool, with_profile: bool, with_task: bool) -> Assembled | None:
        nonlocal over
        if kept_chars[drop] > most_chars:  # the kept turns alone cannot fit: rank nothing
            over = f"at least {kept_chars[drop] // tokenizer.max_token_chars:,} tokens"
            return None
        before = recalled_by(stored.turns[drop:], "memories")
        before_turns = [p for p in recalled_by(stored.turns[drop:], "turns") if 0 <= p < drop]
        recall = _Recall([], [], "")
        if with_memory and last_user is not None:
            ranked = turn_index.ranked(drop, message)[:RECALLED_TURN_CANDIDATES]
            earlier = [(position, turn_recall.line(stored.turns[position])) for position in ranked]
            recall = _recall(stored.memories, earlier, {*before, *before_turns}, tokenizer, memory_budget)
        messages = _messages(stored, new_messages, drop, recall.text, with_profile, with_task)
        pieces = render_pieces(chat_format, messages)
        prompt = "".join(piece.text for piece in pieces)
        if len(prompt) > most_chars:  # cannot fit: not worth tokenizing (megabytes of turns)
            over = f"at least {len(prompt) // tokenizer.max_token_chars:,} tokens"
            return None
        tokens = tokenizer.prompt(pieces)
        if len(tokens) > budget:
            over = f"{len(tokens)} tokens"
            return None
        held = list(dict.fromkeys(before + recall.memories))
        omitted = {
            "turns": drop,
            "memories": max(0, stored.memories_held - len(held)),
            "profile": int(stored.profile is not None and not with_profile),
            "task": int(stored.task is not None and not with_task),
        }
        return Assembled(
            messages,
            prompt,
            tokens,
            omitted,
            turn_count - drop,
            held,
            recall.text,
            recall.memories,
            list(dict.fromkeys(before_turns + recall.turns)),
            recall.turns,
        )

    def fewest(drops: list[int]) -> Assembled | None:
        """The plan dropping the fewest of ``drops`` (ascending; the last fits if any does) that fits."""
        low, high = 0, len(drops) - 1
        found = attempt(drops[high], True, True, True)
        while found is not None and low < high:  # drops[high] fits; find the fewest that do
            middle = (low + high) // 2
            fits = attempt(drops[middle], True, True, True)
            if fits is None:
                low = middle + 1
            else:
                found, high = fits, middle
        return found

    found = attempt(0, True, True, True)
    if found is not None:
        return found
    drops = drop_points(stored.turns, (window or budget) // DROP_SHARE)  # first the turns go, oldest first
    found = fewest(drops[1:]) if len(drops) > 1 else None
    if found is not None:
        dropped = found.omitted["turns"]
        previous = drops[drops.index(dropped) - 1]
        if found.prompt_tokens < budget // 2 and dropped - previous > 1:  # a chunk far larger than estimated
            found = fewest(list(range(previous + 1, dropped + 1))) or found
        return found
    for plan in ((False, True, True), (False, False, True), (False, False, False)):  # then recall, profile, task
        found = attempt(turn_count, *plan)
        if found is not None:
            return found
    raise ContextTooLarge(
        f"instructions, guardrails and the new messages take {over}, "
        f"more than the {budget} tokens the model's window leaves after max_tokens"
    )
