"""The project's one text-file decoder: pretraining corpora, RAG documents, fine-tuning data and perplexity text.

Rules (the RAG loaders' rules, now shared):
1. A UTF-16 byte-order mark -> UTF-16.
2. NUL bytes in the first 64 KiB -> binary, refused.
3. UTF-8 (a UTF-8 BOM is dropped).
4. Otherwise charset-normalizer's best guess (cp1252 preferred among near-equals), with a warning naming it;
   ``utf8_only=True`` refuses instead (fine-tuning JSON must be UTF-8).
5. Many control characters in the first 64 KiB -> binary, refused.
Failures are :class:`TextFileError` (a ValueError) whose message names the source and the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_HEAD = 65536


class TextFileError(ValueError):
    """A text that cannot be decoded; ``reason`` is the message without the source, ``line`` where known."""

    def __init__(self, source: str, reason: str, line: int | None = None) -> None:
        self.source, self.reason, self.line = source, reason, line
        super().__init__(f"{source}: {reason}")


def _binary(source: str, why: str) -> TextFileError:
    return TextFileError(source, f"looks like a binary file (binary content: {why}), not a text file")


def _detect_and_decode(data: bytes, source: str, warnings: list[str]) -> str:
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        warnings.append(f"{source}: unknown encoding, decoded as latin-1 (some characters may be wrong)")
        return data.decode("latin-1")
    enc = best.encoding
    western = [m for m in matches if m.encoding == "cp1252" and m.chaos <= best.chaos + 0.1]
    if enc != "cp1252" and ("cp1252" in best.could_be_from_charset or western):
        enc = "cp1252"  # Latin siblings (cp1250/cp1257/iso8859-x) tie on short text; Western is the likeliest
    warnings.append(f"{source}: not UTF-8, decoded as {enc} (detected)")
    return data.decode(enc, errors="replace")


def decode_text(data: bytes, source: str, warnings: list[str] | None = None, *, utf8_only: bool = False) -> str:
    """Bytes -> text by the rules above; a non-UTF-8 guess appends a warning to ``warnings``."""
    warnings = [] if warnings is None else warnings
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise TextFileError(source, f"the text starts like UTF-16 but is damaged near byte {e.start}") from e
    else:
        if b"\x00" in data[:_HEAD]:
            raise _binary(source, "NUL bytes")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            if utf8_only:
                line = data[: e.start].count(b"\n") + 1
                raise TextFileError(source, f"not valid UTF-8 text (byte {e.start}, line {line})", line) from e
            text = _detect_and_decode(data, source, warnings)
    bad = len(_CONTROL.findall(text[:_HEAD]))
    if bad > max(8, 0.02 * min(len(text), _HEAD)):
        raise _binary(source, f"{bad} control characters")
    return text


def read_text_file(path: str | os.PathLike, source: str | None = None, *,
                   utf8_only: bool = False) -> tuple[str, list[str]]:
    """(text, warnings) of a file; an empty or blank file is a TextFileError ("file is empty")."""
    path = Path(path)
    source = str(path) if source is None else source
    data = path.read_bytes()
    if not data.strip():
        raise TextFileError(source, "file is empty")
    warnings: list[str] = []
    text = decode_text(data, source, warnings, utf8_only=utf8_only)
    if not text.strip():
        raise TextFileError(source, "file is empty")
    return text, warnings
