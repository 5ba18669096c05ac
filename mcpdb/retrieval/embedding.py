"""Text to vectors with llama.cpp's embedding mode (llama-cpp-python), mean-pooled.

The default model is the bundled Gemma 3 270M, the one a node already serves, pooled by the mean of
its last hidden states (measured on 12 facts and 12 paraphrased questions: the right fact first for 10,
in the top three for 11). It is a second ``Llama`` in embedding mode beside the chat worker's, with a
short context: a fact, a question. Calls are serialised (a ``Llama`` is not thread-safe) and run on
the caller's thread, which llama.cpp's decode releases the GIL for.
"""

from __future__ import annotations

import threading
from pathlib import Path

from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

from mcpdb.retrieval import vectors

N_CTX = 512  # tokens: longer texts are cut (llama-cpp-python's truncate), their start is what matters
MAX_TEXT_CHARS = 4 * N_CTX  # cut before tokenizing too: a 256 KiB fact would cost its whole tokenization


class Embedder:
    """One embedding model; ``embed`` gives each text's vector as the store keeps it."""

    def __init__(self, model_path: str, threads: int = 1) -> None:
        self.model = Path(model_path).stem
        self._lock = threading.Lock()
        self._llm = Llama(
            model_path=model_path,
            embedding=True,
            pooling_type=LLAMA_POOLING_TYPE_MEAN,
            n_ctx=N_CTX,
            n_batch=N_CTX,
            n_ubatch=N_CTX,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def embed(self, texts: list[str]) -> list[bytes]:
        """The stored bytes (``vectors.pack``) of each text's vector, in order."""
        with self._lock:
            return [vectors.pack(self._llm.embed(text[:MAX_TEXT_CHARS], truncate=True)) for text in texts]

    def close(self) -> None:
        with self._lock:
            self._llm.close()
