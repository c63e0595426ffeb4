"""Tokenizers built from scratch: byte-level BPE (tiktoken-backed encode), SentencePiece-style BPE (Gemma),
char-level, WordPiece, Unigram, training, chat template, and a side-by-side comparison (:mod:`.compare`).

Imports inside the package point one way: patterns / chat_template <- base <- (char, wordpiece, unigram);
hf_format, gguf_vocab and train return plain data <- bpe; spm_format <- spm (SentencePiece-style);
foreign picks bpe or spm for a downloaded model's files; compare and bpb use them all.
"""

from .base import FILE_NAME, FORMAT_VERSION, Tokenizer, get_stats, merge
from .bpe import BPETokenizer, load_gguf_tokenizer, load_gpt2_files, load_tokenizer_json, train_bpe
from .char import CharTokenizer
from .chat_template import SMOLLM_DEFAULT_SYSTEM, apply_chat_template, render_chat
from .compare import ZooResult, ZooRow, compare_tokenizers, format_table, shakespeare_bpe
from .foreign import load_gguf_vocab, load_hf_tokenizer
from .gguf_vocab import bundled_gguf, bundled_gguf_path
from .hf_format import save_hf
from .patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS, SMOLLM_PATTERN, bytes_to_unicode
from .spm import SentencePieceTokenizer
from .train import DEFAULT_SPECIALS
from .unigram import UnigramTokenizer
from .unigram_train import train_unigram
from .wordpiece import WordPieceTokenizer, train_wordpiece

__all__ = [
    "FILE_NAME", "FORMAT_VERSION", "Tokenizer", "BPETokenizer", "CharTokenizer", "get_stats", "merge",
    "apply_chat_template", "render_chat", "SMOLLM_DEFAULT_SYSTEM", "bundled_gguf", "bundled_gguf_path",
    "load_gguf_tokenizer", "load_tokenizer_json", "load_gpt2_files", "save_hf", "GPT2_PATTERN", "GPT4_PATTERN",
    "SMOLLM_PATTERN", "PATTERNS", "bytes_to_unicode", "train_bpe", "DEFAULT_SPECIALS",
    "WordPieceTokenizer", "train_wordpiece", "UnigramTokenizer", "train_unigram",
    "compare_tokenizers", "format_table", "ZooResult", "ZooRow", "shakespeare_bpe",
    "SentencePieceTokenizer", "load_hf_tokenizer", "load_gguf_vocab",
]
