"""Tokenizers built from scratch: byte-level BPE (tiktoken-backed encode), char-level, training, chat template."""

from .base import FILE_NAME, FORMAT_VERSION, Tokenizer, get_stats, merge
from .bpe import BPETokenizer
from .char import CharTokenizer
from .chat_template import SMOLLM_DEFAULT_SYSTEM, apply_chat_template, render_chat
from .gguf_vocab import bundled_gguf_path, load_gguf_tokenizer
from .hf_format import load_gpt2_files, load_tokenizer_json, save_hf
from .patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS, SMOLLM_PATTERN, bytes_to_unicode
from .train import DEFAULT_SPECIALS, train_bpe

__all__ = [
    "FILE_NAME", "FORMAT_VERSION", "Tokenizer", "BPETokenizer", "CharTokenizer", "get_stats", "merge",
    "apply_chat_template", "render_chat", "SMOLLM_DEFAULT_SYSTEM", "bundled_gguf_path", "load_gguf_tokenizer",
    "load_tokenizer_json", "load_gpt2_files", "save_hf", "GPT2_PATTERN", "GPT4_PATTERN", "SMOLLM_PATTERN",
    "PATTERNS", "bytes_to_unicode", "train_bpe", "DEFAULT_SPECIALS",
]
