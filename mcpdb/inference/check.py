"""``python -m mcpdb.inference.check``: load the bundled model and decode a few tokens.

Setup runs it once after installing llama-cpp-python, so a build that cannot
run the model (wrong CPU flags, a crashing backend) is reported there, in
one line, instead of as a segfault in the middle of the test suite.
"""

from __future__ import annotations

import sys

from mcpdb.inference.llama_worker import default_model_path


def main() -> int:
    from llama_cpp import Llama

    llm = Llama(model_path=default_model_path(), n_ctx=256, n_threads=1, verbose=False)
    out = llm.create_completion(
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", max_tokens=4, temperature=0.0
    )
    assert isinstance(out, dict), "a completion without stream=True is one response"
    tokens = out["usage"]["completion_tokens"]
    print(f"setup: llama-cpp-python decoded {tokens} tokens with the bundled model")
    return 0 if tokens > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
