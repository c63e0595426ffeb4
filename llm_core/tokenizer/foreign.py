"""Pick the tokenizer type a downloaded model's files need: byte-level BPE (GPT-2, SmolLM2, Qwen) or
SentencePiece-style BPE (Gemma), from a HF ``tokenizer.json`` or from GGUF metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import Tokenizer
from .bpe import BPETokenizer
from .gguf_vocab import gguf_field, open_gguf
from .spm import SentencePieceTokenizer
from .spm_format import is_sentencepiece_json


def load_hf_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A HF ``tokenizer.json`` (file or its folder) as the matching tokenizer type."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if is_sentencepiece_json(path):
        return SentencePieceTokenizer.from_tokenizer_json(path)
    return BPETokenizer.from_tokenizer_json(path)


def load_gguf_vocab(path: str | os.PathLike | Any) -> Tokenizer:
    """The vocabulary in a GGUF file (or an open ``gguf.GGUFReader``): ``tokenizer.ggml.model`` "gpt2" is
    byte-level BPE, "llama" is SentencePiece-style (Gemma's GGUFs)."""
    reader, path = open_gguf(path)
    kind = gguf_field(reader, "tokenizer.ggml.model")
    if kind == "llama":
        return SentencePieceTokenizer.from_gguf(reader)
    if kind == "gpt2":
        return BPETokenizer.from_gguf(reader)
    raise ValueError(f"{path}: tokenizer.ggml.model {kind!r} is not supported ('gpt2' byte-level BPE, "
                     "'llama' SentencePiece-style BPE)")
