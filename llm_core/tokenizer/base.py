"""Tokenizer base class, the pure BPE helpers, and the versioned save format.

Every tokenizer saves to one JSON file, ``tokenizer_scratch.json``, with a ``version`` and a ``type``
field; :meth:`Tokenizer.load` dispatches on ``type`` to the right subclass. Subclasses register themselves
(``type_name``) when their module is imported (the package ``__init__`` imports them all), so this module
imports none of them: the imports inside the package point one way, from the subclasses to here.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import regex

from llm_core.atomic import write_text

from .chat_template import apply_chat_template as _apply_chat_template

FILE_NAME = "tokenizer_scratch.json"
FORMAT_VERSION = 1

_REGISTRY: dict[str, type[Tokenizer]] = {}


def get_stats(ids: list[int], counts: dict[tuple[int, int], int] | None = None) -> dict[tuple[int, int], int]:
    """Count consecutive pairs: [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}; updates ``counts`` in place."""
    counts = {} if counts is None else counts
    for pair in itertools.pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], idx: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) with ``idx``.

    One pass with the output as a stack: a ``pair[1]`` that follows an unmerged ``pair[0]`` folds into it (``idx``
    is a new id, so a merged token never matches ``pair[0]`` again: "aaa" with ("a", "a") gives [idx, "a"])."""
    first, second = pair
    out: list[int] = []
    for t in ids:
        if out and t == second and out[-1] == first:
            out[-1] = idx
        else:
            out.append(t)
    return out


class Tokenizer:
    """Common interface: encode/decode, special tokens, chat template, save/load."""

    type_name: ClassVar[str] = ""

    def __init__(self) -> None:
        self.special_tokens: dict[str, int] = {}
        self.bos_token_id: int | None = None
        self.eos_token_id: int | None = None
        self.pad_token_id: int | None = None
        self.add_bos_token: bool = False  # plain prompts start with BOS (Gemma); read from the HF/GGUF files
        self.chat_template: str | None = None  # "chatml" or None
        self.default_system_prompt: str | None = None  # injected by the chat template when no system message

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _REGISTRY[cls.type_name] = cls

    # --- interface --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str, allowed_special: str | set[str] = "all") -> list[int]:
        """Text -> ids: allowed special tokens become their ids, the text between them goes to ``_encode_plain``."""
        specials = self._allowed_specials(allowed_special)
        if not specials:
            return self._encode_plain(text)
        alts = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
        out: list[int] = []
        for k, chunk in enumerate(regex.split(f"({alts})", text)):
            out.extend([specials[chunk]] if k % 2 else self._encode_plain(chunk))
        return out

    def encode_prompt(self, text: str, allowed_special: str | set[str] = "all") -> list[int]:
        """Ids of a plain (non-chat) prompt to continue: :meth:`encode`, with BOS in front when this tokenizer's
        model expects it (``add_bos_token``: Gemma yes, SmolLM2/GPT-2 no), as transformers' ``tokenizer(text)``
        does. A prompt that already starts with BOS does not get a second one."""
        ids = self.encode(text, allowed_special=allowed_special)
        bos = self.bos_token_id
        if self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        """Ids of text holding no special token (each tokenizer type's own algorithm)."""
        raise NotImplementedError

    def _encode_words(self, words: Iterable[str]) -> list[int]:
        """Ids of pre-split words through the subclass's ``encode_word``, cached per word (words repeat)."""
        cache: dict[str, list[int]] = self.__dict__.setdefault("_cache", {})
        out: list[int] = []
        for word in words:
            ids = cache.get(word)
            if ids is None:
                ids = self.encode_word(word)  # type: ignore[attr-defined]
                if len(cache) < 200_000:
                    cache[word] = ids
            out.extend(ids)
        return out

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.id_to_piece(i) for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_piece(self, i: int) -> bytes:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        """Id of a special token (or None)."""
        return self.special_tokens.get(token)

    # --- special tokens ---------------------------------------------------------------------------
    def _allowed_specials(self, allowed_special: str | set[str]) -> dict[str, int]:
        if allowed_special == "all":
            return self.special_tokens
        if allowed_special == "none" or not allowed_special:
            return {}
        if isinstance(allowed_special, str):
            raise ValueError(f"allowed_special must be 'all', 'none' or a set of token strings, got {allowed_special!r}")
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names tokens this tokenizer does not have: {sorted(unknown)}")
        return {k: v for k, v in self.special_tokens.items() if k in allowed_special}

    def _check_ids(self, ids: list[int]) -> None:
        n = self.vocab_size
        for i in ids:
            if not 0 <= int(i) < n:
                raise ValueError(f"token id {i} is out of range for a vocabulary of {n}")

    # --- chat -------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return _apply_chat_template(self, messages, add_generation_prompt=add_generation_prompt)

    # --- save / load ------------------------------------------------------------------------------
    def _common_state(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "type": self.type_name,
            "special_tokens": self.special_tokens,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "add_bos_token": self.add_bos_token,
            "chat_template": self.chat_template,
            "default_system_prompt": self.default_system_prompt,
        }

    def _load_common(self, state: dict[str, Any]) -> None:
        self.special_tokens = {str(k): int(v) for k, v in state.get("special_tokens", {}).items()}
        self.bos_token_id = state.get("bos_token_id")
        self.eos_token_id = state.get("eos_token_id")
        self.pad_token_id = state.get("pad_token_id")
        self.add_bos_token = bool(state.get("add_bos_token", False))
        self.chat_template = state.get("chat_template")
        self.default_system_prompt = state.get("default_system_prompt")

    def to_state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tokenizer:
        raise NotImplementedError

    @classmethod
    def from_foreign_folder(cls, folder: Path) -> Tokenizer | None:
        """A tokenizer from another library's files in ``folder`` (HF tokenizer.json, ...), or None."""
        return None

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/tokenizer_scratch.json`` atomically; returns the file path."""
        path = Path(folder) / FILE_NAME
        write_text(path, json.dumps(self.to_state(), ensure_ascii=False, separators=(",", ":")))
        return path

    @staticmethod
    def load(folder: str | os.PathLike) -> Tokenizer:
        """Load from a folder holding ``tokenizer_scratch.json`` (or the file itself). A folder without one but
        with a HF ``tokenizer.json`` (or GPT-2 ``vocab.json`` + ``merges.txt``) is read through those."""
        path = Path(folder)
        if path.is_dir():
            if not (path / FILE_NAME).is_file():
                for cls in _REGISTRY.values():
                    tok = cls.from_foreign_folder(path)
                    if tok is not None:
                        return tok
            path = path / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        version = state.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported tokenizer format version {version!r} (this code reads <= {FORMAT_VERSION})")
        kind = state.get("type")
        if kind not in _REGISTRY:
            raise ValueError(f"{path}: unknown tokenizer type {kind!r} (known: {sorted(_REGISTRY)})")
        return _REGISTRY[kind].from_state(state)


class ByteTableTokenizer(Tokenizer):
    """A tokenizer whose every id stands for fixed bytes, kept in one table ``_id_bytes`` (byte-level BPE,
    SentencePiece with byte fallback): decoding is a lookup. Subclasses fill the table."""

    _id_bytes: list[bytes | None]

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    def id_to_piece(self, i: int) -> bytes:
        piece = self._id_bytes[i] if 0 <= i < len(self._id_bytes) else None
        if piece is None:
            raise ValueError(f"token id {i} is not in this vocabulary (size {self.vocab_size})")
        return piece

    def decode_bytes(self, ids: list[int]) -> bytes:
        try:
            return b"".join([self._id_bytes[i] for i in ids])  # type: ignore[misc]
        except (TypeError, IndexError):
            for i in ids:
                self.id_to_piece(int(i))  # raises with a clear message
            raise


