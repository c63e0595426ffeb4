"""Character-level tokenizer: one id per distinct character of the training text (nanoGPT's first step)."""

from __future__ import annotations

from typing import Any

from .base import Tokenizer


class CharTokenizer(Tokenizer):
    """ids 0..n-1 are the sorted characters; special tokens (if any) follow."""

    type_name = "char"

    def __init__(self, chars: list[str], special_tokens: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("chars must be distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {s: len(self.chars) + k for k, s in enumerate(special_tokens)}
        self._pieces = [c.encode("utf-8", "surrogatepass") for c in self.chars] + [s.encode() for s in special_tokens]
        eot = self.special_tokens.get("<|endoftext|>")
        self.bos_token_id = self.eos_token_id = self.pad_token_id = eot

    @classmethod
    def train(cls, text: str, special_tokens: list[str] | tuple[str, ...] = ()) -> CharTokenizer:
        """Vocabulary = sorted set of the characters in ``text`` (special-token text is not split into chars)."""
        if not text:
            raise ValueError("training text is empty")
        for s in special_tokens:
            text = text.replace(s, "")
        return cls(sorted(set(text)), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def _encode_plain(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise ValueError(f"character {c!r} (U+{ord(c):04X}) is not in this character vocabulary "
                             f"of {len(self.chars)} characters") from None

    def id_to_piece(self, i: int) -> bytes:
        if not 0 <= i < len(self._pieces):
            raise ValueError(f"token id {i} is out of range for a vocabulary of {len(self._pieces)}")
        return self._pieces[i]

    def to_state(self) -> dict[str, Any]:
        state = self._common_state()
        state["chars"] = "".join(self.chars)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CharTokenizer:
        specials = sorted(state.get("special_tokens", {}).items(), key=lambda kv: kv[1])
        tok = cls(list(state["chars"]), [s for s, _ in specials])
        tok._load_common(state)
        if tok.special_tokens != {s: int(i) for s, i in specials}:
            raise ValueError("char tokenizer file: special token ids must follow the characters in order")
        return tok
