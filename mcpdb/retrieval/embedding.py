"""Text to vectors with llama.cpp's embedding mode (llama-cpp-python).

Two recipes, chosen by the model file:

- an **embedding model** (its GGUF metadata names a pooling type, as BERT-style and EmbeddingGemma
  files do, the default all-MiniLM-L6-v2's among them: ``minilm.py``) embeds the text as it is,
  pooled the way it was trained;
- a **generative model** (the bundled Gemma 3 270M, whose file names none) embeds the text inside the
  PromptEOL prompt (Jiang et al. 2023, "Scaling Sentence Embeddings with Large Language Models"),
  ``This sentence : "<text>" means in one word:"``, and keeps the last token's hidden state: the model
  was trained to predict a next word, so the state that predicts the one word summing the text up is
  its best summary of it. Measured on the retrieval benchmark's corpus (3 users, 72 paraphrased
  questions among 48 memories each): recall@1 0.47 and recall@5 0.86, against 0.13 and 0.43 for the
  mean of the raw text's hidden states.

A second ``Llama`` beside the chat worker's, with a short context: a fact, a question. Calls are
serialised (a ``Llama`` is not thread-safe) and run on the caller's thread, which llama.cpp's decode
releases the GIL for. ``model`` names the model and the recipe: vectors of different ones do not
compare. One thread by default: a query is a dozen tokens, and on the default model one thread
embeds it faster than two (measured: 12.9 ms against 15.4 ms p50), leaving the other core to the chat.
"""

from __future__ import annotations

import threading
from pathlib import Path

from llama_cpp import LLAMA_POOLING_TYPE_LAST, LLAMA_POOLING_TYPE_UNSPECIFIED, Llama

from mcpdb.retrieval import vectors

N_CTX = 512  # tokens: longer texts are cut, their start is what matters
# Cut before tokenizing (a 256 KiB fact would cost its whole tokenization). Inside the prompt the cut
# leaves room for its end at one token per character, the worst case, since its last token is the vector.
MAX_TEXT_CHARS = 4 * N_CTX
MAX_PROMPTED_CHARS = N_CTX - 64
# A query is embedded from its first 1,024 characters, runs of white space first made one space (a
# query of 2,048 spaces and a word had been cut to the spaces): about 256 tokens, what sentence encoders
# like all-MiniLM-L6-v2 are trained on, and a quarter of a 4 KiB query's cost (0.5 s), which any
# client of the search API can ask for.
MAX_QUERY_CHARS = 1024
PROMPT_EOL = 'This sentence : "{text}" means in one word:"'


def _names_pooling(model_path: str) -> bool:
    """Whether the GGUF file says how to pool it (an embedding model): its metadata, read alone."""
    probe = Llama(model_path=model_path, vocab_only=True, verbose=False)
    try:
        architecture = probe.metadata.get("general.architecture", "")
        return f"{architecture}.pooling_type" in probe.metadata
    finally:
        probe.close()


class Embedder:
    """One embedding model; ``embed`` gives each text's vector as the store keeps it."""

    def __init__(self, model_path: str, threads: int = 1) -> None:
        trained_to_embed = _names_pooling(model_path)
        self._template = "{text}" if trained_to_embed else PROMPT_EOL
        self._max_chars = MAX_TEXT_CHARS if trained_to_embed else MAX_PROMPTED_CHARS
        self.model = Path(model_path).stem + ("" if trained_to_embed else "+prompteol")
        # One text at a time on the model, a waiting query's before the next context's: a search or a
        # chat waits for at most one background text, not for the duty's batch of sixteen (seconds).
        self._turn = threading.Condition()
        self._busy = self._closed = False
        self._queries_waiting = 0
        self._llm = Llama(
            model_path=model_path,
            embedding=True,
            pooling_type=LLAMA_POOLING_TYPE_UNSPECIFIED if trained_to_embed else LLAMA_POOLING_TYPE_LAST,
            n_ctx=N_CTX,
            n_batch=N_CTX,
            n_ubatch=N_CTX,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def _embedded(self, text: str, query: bool) -> bytes:
        waiting = 1 if query else 0
        with self._turn:
            self._queries_waiting += waiting
            try:
                self._turn.wait_for(lambda: self._closed or (not self._busy and (query or not self._queries_waiting)))
            finally:
                self._queries_waiting -= waiting
            if self._closed:  # a caller waiting when the node shut the model: an error, not a wait forever
                raise RuntimeError("the embedding model is closed")
            self._busy = True
        try:
            return vectors.pack(self._llm.embed(self._template.format(text=text[: self._max_chars]), truncate=True))
        finally:
            with self._turn:
                self._busy = False
                self._turn.notify_all()

    def embed(self, texts: list[str]) -> list[bytes]:
        """The stored bytes (``vectors.pack``) of each context text's vector, in order (background work:
        each text yields to any query waiting)."""
        return [self._embedded(text, query=False) for text in texts]

    def embed_query(self, text: str) -> bytes:
        """A query's vector, before any context text still waiting (``MAX_QUERY_CHARS`` of it)."""
        return self._embedded(" ".join(text.split())[:MAX_QUERY_CHARS], query=True)

    def close(self) -> None:
        """Close the model once the text on it is done; whoever still waits gets an error."""
        with self._turn:
            self._turn.wait_for(lambda: not self._busy)
            self._closed = True
            self._llm.close()
            self._turn.notify_all()
