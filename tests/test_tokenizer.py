"""BPE tokenizer: SmolLM2 vocabulary from GGUF, parity with Hugging Face, tiktoken == pure Python, chat template."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_core.tokenizer import (
    FILE_NAME,
    BPETokenizer,
    Tokenizer,
    bundled_gguf_path,
    get_stats,
    merge,
    render_chat,
)
from llm_core.tokenizer.patterns import _NEW_UNICODE_LN, python_pattern
from llm_core.training.data import shakespeare_text

VARIED = (
    "Hello, world! The quick brown fox jumps over the lazy dog.\n"
    "def add(a, b):\n    return a + b  # sum\n\n\n"
    "x = [1, 22, 333, 4444, 1234567, 3.14159, -42, 1e10]\n"
    "    if x >= 10:\n\t\tprint(f'{x:>8}')\n"
    "Emoji: 😀🎉👩‍👩‍👧 ❤️ 🇫🇷\n"
    "CJK: 你好，世界。日本語のテキスト。한국어 텍스트\n"
    "Runs:     spaces      and\n\n\n\nnewlines \r\n  \n"
    "Accents: café naïve Ελληνικά русский العربية हिन्दी\n"
    "Specials: <|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    "Contractions: don't, I'm, we'll, they've, she'd, it's. 'quoted' \"dq\" ALL'S\n"
    "Indented numbers:\n        2024\n  7\n\n 12 \n"
)
TRICKY = ["", " ", "a", "😀", "👩‍👩‍👧", "你好世界", "   ", "\t \t", "\n\n\n", "\r\n", " \n \n ", "1234567",
          "  42", "\n 7", "a  1", "héllo wörld", "<|im_end|>", "x<|im_start|>y", "<|im_start", "ab\x04cd",
          "\x06\x13", "it's 'S 'LL", "mixed 😀 你好 123 \n\t x", "\ufeff\u200b\u00a0", "\U0001F600" * 5]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "x2?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "你好 😀\n\ncode:\n    42"}],
]


@pytest.fixture(scope="module")
def smol() -> BPETokenizer:
    return BPETokenizer.from_gguf()


@pytest.fixture(scope="module")
def smol_gpt2(smol: BPETokenizer) -> BPETokenizer:
    """Same vocabulary with the plain GPT-2 regex: what transformers' GGUF loader builds."""
    return BPETokenizer.from_state({**smol.to_state(), "pattern": "gpt2"})


@pytest.fixture(scope="module")
def hf_auto():
    from transformers import AutoTokenizer

    path = bundled_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def hf_digits(hf_auto):
    """transformers' GGUF tokenizer with SmolLM2's published pre-tokenizer: Sequence[Digits, ByteLevel]."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers as pt

    tk = HFTokenizer.from_str(hf_auto.backend_tokenizer.to_str())
    tk.pre_tokenizer = pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)])
    return tk


def test_helpers_get_stats_and_merge() -> None:
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([5, 5, 5], (5, 5), 7) == [7, 5]  # left to right, non-overlapping


def test_gguf_metadata(smol: BPETokenizer) -> None:
    assert smol.vocab_size == 49152
    assert (smol.bos_token_id, smol.eos_token_id, smol.pad_token_id) == (1, 2, 2)
    assert smol.special_tokens["<|im_start|>"] == 1 and smol.special_tokens["<|im_end|>"] == 2
    assert smol.chat_template == "chatml"
    assert smol.default_system_prompt == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert smol.id_to_piece(19556) == b"Hello"


def test_ids_equal_transformers_gguf_tokenizer(smol_gpt2: BPETokenizer, hf_auto) -> None:
    """transformers' GGUF loader uses the plain ByteLevel regex; with that pattern our ids are identical."""
    expected = hf_auto(VARIED, add_special_tokens=False)["input_ids"]
    assert smol_gpt2.encode(VARIED) == expected
    assert smol_gpt2.encode_python(VARIED) == expected
    assert smol_gpt2.decode(expected) == VARIED


def test_default_pattern_equals_smollm2_pretokenizer(smol: BPETokenizer, hf_digits) -> None:
    """GGUF says tokenizer.ggml.pre = smollm: digits isolated (SmolLM2's tokenizer.json, llama.cpp)."""
    expected = hf_digits.encode(VARIED, add_special_tokens=False).ids
    assert smol.encode(VARIED) == expected
    assert smol.encode_python(VARIED) == expected


def test_patterns_differ_only_where_documented(smol: BPETokenizer, smol_gpt2: BPETokenizer) -> None:
    # GPT-2 regex: "   " + " 42"; SmolLM2 (digits isolated): "    " + "4" + "2"
    assert [smol_gpt2.decode([i]) for i in smol_gpt2.encode("    42")] == ["   ", " ", "4", "2"]
    assert [smol.decode([i]) for i in smol.encode("    42")] == ["    ", "4", "2"]
    assert smol.encode("no digits here, 你好 😀\n\n  x") == smol_gpt2.encode("no digits here, 你好 😀\n\n  x")


@pytest.mark.parametrize("text", TRICKY)
def test_tiktoken_equals_python_and_hf(smol: BPETokenizer, smol_gpt2: BPETokenizer, hf_auto, hf_digits,
                                       text: str) -> None:
    for tok, ref in ((smol, hf_digits.encode(text, add_special_tokens=False).ids),
                     (smol_gpt2, hf_auto(text, add_special_tokens=False)["input_ids"])):
        assert tok.encode(text) == tok.encode_python(text) == ref
        for allowed in ("none", set()):
            assert tok.encode(text, allowed_special=allowed) == tok.encode_python(text, allowed_special=allowed)


def test_large_text_three_way(smol: BPETokenizer, hf_digits) -> None:
    text = shakespeare_text()[:300_000]
    ids = smol.encode(text)
    assert ids == smol.encode_python(text) == hf_digits.encode(text, add_special_tokens=False).ids
    assert smol.decode(ids) == text


def test_every_token_encodes_to_itself(smol: BPETokenizer) -> None:
    """Both engines map each vocabulary token's bytes back to that one id (tiktoken's whole-piece shortcut is
    therefore consistent with HF's merge-by-merge BPE for this vocabulary)."""
    enc = smol._tiktoken()
    regular = [(i, p) for i, p in smol.vocab.items() if i not in smol.special_tokens.values()]
    assert len(regular) == 49152 - 17
    assert all(smol._bpe(p) == [i] for i, p in regular)
    assert all(enc._encode_single_piece(p) == [i] for i, p in regular)


def test_python_regex_matches_tiktoken_on_new_unicode(smol: BPETokenizer) -> None:
    """The `regex` module knows Unicode 16+ letters that tiktoken/tokenizers do not; python_pattern removes them."""
    import regex

    chars = [chr(c) for a, b in _NEW_UNICODE_LN for c in (a, b)] + ["a", "1", "٣", "Ⅻ", "\u2028", "\x1c", "\x85"]
    text = "".join(f"a{c}b {c}1  {c}{c}  \n{c}x " for c in chars)
    naive = regex.findall(smol.pattern, text)
    fixed = python_pattern(smol.pattern).findall(text)
    assert naive != fixed  # the plain regex would split differently ...
    assert smol.encode_python(text) == smol.encode(text)  # ... the adjusted one matches tiktoken


def test_special_tokens(smol: BPETokenizer) -> None:
    s = "<|im_start|>user\nhi<|im_end|>"
    assert smol.encode(s)[0] == 1 and smol.encode(s)[-1] == 2
    plain = smol.encode(s, allowed_special="none")
    assert 1 not in plain and 2 not in plain and smol.decode(plain) == s
    only_start = smol.encode(s, allowed_special={"<|im_start|>"})
    assert only_start[0] == 1 and 2 not in only_start
    with pytest.raises(ValueError, match="does not have"):
        smol.encode(s, allowed_special={"<|nope|>"})


def test_bytes_missing_from_vocab_are_dropped_like_hf(smol: BPETokenizer, hf_digits) -> None:
    """SmolLM2 lacks 21 single bytes (e.g. 0x04); HF drops them, so do we (via the Python path)."""
    assert smol.byte_ids[4] is None
    text = "a\x04b (\x04) \U00050000x"
    assert smol.encode(text) == hf_digits.encode(text, add_special_tokens=False).ids


def test_decode_errors(smol: BPETokenizer) -> None:
    with pytest.raises(ValueError, match="not in this vocabulary"):
        smol.decode([10**6])
    with pytest.raises(TypeError, match="expects str"):
        smol.encode(b"bytes")  # type: ignore[arg-type]
    assert smol.decode(smol.encode("😀")[:1]) == "\ufffd"  # partial UTF-8 -> replacement char
    assert smol.decode_bytes(smol.encode("😀")) == "😀".encode()


def _allowed_char(c: str) -> bool:
    return not _SMOL_MISSING.intersection(c.encode("utf-8"))


_SMOL_MISSING = {4, 6, 19, 20, 22, 29, 192, 193, 241, 242, *range(245, 256)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)).filter(_allowed_char), max_size=60))
def test_roundtrip_property_smollm(smol: BPETokenizer, text: str) -> None:
    ids = smol.encode(text)
    assert smol.decode(ids) == text
    assert ids == smol.encode_python(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_hf_parity_property_any_unicode(smol: BPETokenizer, smol_gpt2: BPETokenizer, hf_auto, hf_digits,
                                        text: str) -> None:
    """Including bytes the vocabulary lacks and code points from every plane."""
    assert smol.encode(text) == hf_digits.encode(text, add_special_tokens=False).ids
    assert smol_gpt2.encode(text) == hf_auto.backend_tokenizer.encode(text, add_special_tokens=False).ids


def test_save_load_roundtrip(smol: BPETokenizer, tmp_path) -> None:
    smol.save(tmp_path)
    state = json.loads((tmp_path / FILE_NAME).read_text())
    assert state["version"] == 1 and state["type"] == "bpe" and state["pattern"] == "smollm"
    loaded = Tokenizer.load(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.encode(VARIED) == smol.encode(VARIED)
    assert (loaded.vocab == smol.vocab and loaded.bos_token_id == 1 and loaded.eos_token_id == 2
            and loaded.default_system_prompt == smol.default_system_prompt)
    state["version"] = 99
    (tmp_path / FILE_NAME).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="unsupported tokenizer format version 99"):
        Tokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing")


def test_tokenizer_json_and_gpt2_files(smol_gpt2: BPETokenizer, hf_auto, tmp_path) -> None:
    hf_auto.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    from_json = BPETokenizer.from_tokenizer_json(tmp_path)
    assert from_json.merges == smol_gpt2.merges and from_json.pattern == smol_gpt2.pattern
    assert from_json.encode(VARIED) == smol_gpt2.encode(VARIED)
    model = json.loads((tmp_path / "tokenizer.json").read_text())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in model["merges"]) + "\n")
    gpt2 = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert gpt2.eos_token_id == 0 and gpt2.special_tokens == {"<|endoftext|>": 0}
    plain = VARIED.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert gpt2.encode(plain) == smol_gpt2.encode(plain)


def test_save_hf_loads_in_autotokenizer(smol: BPETokenizer, hf_digits, tmp_path) -> None:
    from transformers import AutoTokenizer

    smol.save_hf(tmp_path)
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto(VARIED, add_special_tokens=False)["input_ids"] == smol.encode(VARIED)
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (1, 2, 2)
    for msgs in CHATS:
        assert auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
            smol.apply_chat_template(msgs)
    back = Tokenizer.load(tmp_path)  # no tokenizer_scratch.json: read through tokenizer.json
    assert back.encode(VARIED) == smol.encode(VARIED) and back.default_system_prompt == smol.default_system_prompt


@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_equals_transformers(smol: BPETokenizer, smol_gpt2: BPETokenizer, hf_auto, hf_digits,
                                           gen: bool) -> None:
    for msgs in CHATS:
        expected = hf_auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert smol.apply_chat_template(msgs, add_generation_prompt=gen) == expected
        assert smol.encode(expected) == hf_digits.encode(expected, add_special_tokens=False).ids
        assert smol_gpt2.encode(expected) == hf_auto(expected, add_special_tokens=False)["input_ids"]


def test_render_chat_truncates_oldest_turns(smol: BPETokenizer) -> None:
    sys_msg = {"role": "system", "content": "Be brief."}
    turns = []
    for k in range(12):
        turns += [{"role": "user", "content": f"question {k} " + "word " * 20},
                  {"role": "assistant", "content": f"answer {k} " + "text " * 20}]
    msgs = [sys_msg, *turns, {"role": "user", "content": "final question?"}]
    full = smol.encode(smol.apply_chat_template(msgs))
    assert render_chat(smol, msgs, max_tokens=len(full)) == full  # fits: unchanged
    budget = len(full) // 3
    ids = render_chat(smol, msgs, max_tokens=budget)
    assert len(ids) <= budget
    text = smol.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nfinal question?<|im_end|>\n<|im_start|>assistant\n")
    assert "question 0 " not in text and "question 11 " in text
    assert text.split("<|im_end|>\n")[1].startswith("<|im_start|>user\n")  # history starts on a user turn
    # the result is exactly the template applied to the kept messages
    kept = [sys_msg] + [m for m in turns if m["content"].split(" ")[1] in text.split()] + [msgs[-1]]
    assert ids == smol.encode(smol.apply_chat_template(kept))


def test_render_chat_keeps_end_of_long_message_and_errors(smol: BPETokenizer) -> None:
    long_msg = [{"role": "user", "content": "BEGIN " + "filler " * 500 + "THE END"}]
    ids = render_chat(smol, long_msg, max_tokens=80)
    assert len(ids) <= 80
    text = smol.decode(ids)
    assert "THE END" in text and "BEGIN" not in text and "You are a helpful AI assistant" in text
    with pytest.raises(ValueError, match="too small"):
        render_chat(smol, long_msg, max_tokens=10)
    with pytest.raises(ValueError, match="content"):
        render_chat(smol, [{"role": "user"}], max_tokens=100)
