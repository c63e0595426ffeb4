"""Pre-tokenization regexes and the GPT-2 byte <-> unicode mapping.

The regex splits text into pieces ("words") before BPE so merges never cross a word boundary.
tiktoken (Rust fancy-regex) and HF tokenizers (Oniguruma) agree on every code point; the Python
``regex`` module knows newer Unicode letters/numbers (16.0+), so :func:`python_pattern` removes
those from ``\\p{L}``/``\\p{N}`` to make the pure-Python path produce the same pieces.
"""

from __future__ import annotations

from functools import lru_cache

import regex

# GPT-2 (and the HF ByteLevel pre-tokenizer with use_regex=True).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4 (cl100k_base).
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# SmolLM2: HF pre-tokenizer Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)], which is
# llama.cpp's "smollm" pre type. Every digit is its own piece; the GPT-2 regex runs on the text between digits,
# so a digit also ends a whitespace run (``\s+(?!\S)`` sees the segment end there).
SMOLLM_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

# Qwen2/2.5/3 (their tokenizer.json: Split(this regex, Isolated) + ByteLevel without its own regex; llama.cpp's
# "qwen2" pre type): cl100k-like, but every digit is its own piece.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "smollm": SMOLLM_PATTERN,
                            "qwen2": QWEN2_PATTERN}

# Code points the Python `regex` module (Unicode 17) classifies as \p{L} or \p{N} but tiktoken's and
# tokenizers' regex engines (Unicode 15) do not: letters/numbers added in Unicode 16 and 17.
# Found by sweeping every code point through both engines (see tests/test_tokenizer.py).
_NEW_UNICODE_LN = [
    (0x558, 0x558), (0x58B, 0x58C), (0x88F, 0x88F), (0xC5C, 0xC5C), (0xCDC, 0xCDC), (0x208F, 0x208F),
    (0x209D, 0x209F), (0xA7CE, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7DD, 0xA7DD), (0xA7E2, 0xA7E2),
    (0xA7F1, 0xA7F1), (0xAB6C, 0xAB6D), (0x107BB, 0x107BF), (0x10940, 0x10959), (0x10EC5, 0x10EC7),
    (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DB0, 0x11DDB), (0x11DE0, 0x11DE9), (0x11DF1, 0x11DF1),
    (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686), (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3),
    (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18CD6, 0x18CDA), (0x18D09, 0x18D20), (0x18D80, 0x18DF2),
    (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128), (0x1B168, 0x1B168), (0x1D6A6, 0x1D6A6),
    (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF), (0x1E6C0, 0x1E6DE),
    (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED), (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF),
    (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E), (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479), (0x3D000, 0x3FC3F),
]


def resolve_pattern(pattern: str) -> str:
    """A pattern name ("gpt2", "gpt4", "smollm", "qwen2") or a raw regex -> the regex string."""
    return PATTERNS.get(pattern, pattern)


def pattern_name(pat_str: str) -> str | None:
    """The short name of a known pattern, else None."""
    for name, pat in PATTERNS.items():
        if pat == pat_str:
            return name
    return None


@lru_cache(maxsize=16)
def python_pattern(pat_str: str) -> regex.Pattern:
    """Compile ``pat_str`` for the `regex` module so it splits exactly like tiktoken's engine."""
    new = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _NEW_UNICODE_LN)
    pat = pat_str.replace(r"\p{L}", rf"[\p{{L}}--[{new}]]").replace(r"\p{N}", rf"[\p{{N}}--[{new}]]")
    # V1 for nested sets / set difference; (?-f): simple case folding like Rust's regex in (?i:...).
    return regex.compile(r"(?-f)" + pat, flags=regex.V1)


def clean_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded: replace them with U+FFFD (what tiktoken does)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map (so BPE vocab files are valid text; space -> 'Ġ').

    The 188 bytes that print as themselves in Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') keep their character; the
    other 68 (controls, space, DEL, NBSP, soft hyphen), in byte order, take the characters from U+0100 on."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(0x100 + k) for k, b in enumerate(sorted(set(range(256)) - set(printable)))})
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_str_to_bytes(s: str) -> bytes:
    """A byte-level vocab string ('Ġthe') -> its bytes (b' the'). Raises ValueError on a char outside the map."""
    u2b = unicode_to_bytes()
    try:
        return bytes(u2b[c] for c in s)
    except KeyError as e:
        raise ValueError(f"token {s!r} is not a byte-level BPE token (char {e.args[0]!r} outside the byte map)") from None


def bytes_to_token_str(b: bytes) -> str:
    """Inverse of :func:`token_str_to_bytes`."""
    b2u = bytes_to_unicode()
    return "".join(b2u[x] for x in b)
