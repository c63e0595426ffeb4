"""BPE training (incremental algorithm == naive reference), save/load, HF export, char tokenizer."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_core.tokenizer import FILE_NAME, BPETokenizer, CharTokenizer, Tokenizer, get_stats, merge, train_bpe
from llm_core.tokenizer.patterns import python_pattern, resolve_pattern
from llm_core.training.data import shakespeare_text

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def corpus() -> str:
    return shakespeare_text()


@pytest.fixture(scope="module")
def trained(corpus: str) -> BPETokenizer:
    return train_bpe(corpus[:200_000], vocab_size=1024, pattern="gpt4")


def naive_train(text: str, vocab_size: int, pattern: str) -> tuple[list[tuple[int, int, int]], int]:
    """The textbook BPE trainer, as reference: recount every pair over the whole text for every merge. Ties ->
    smallest pair."""
    chunks = [list(c.encode("utf-8")) for c in python_pattern(resolve_pattern(pattern)).findall(text)]
    merges = []
    for k in range(vocab_size - 256):
        stats: dict[tuple[int, int], int] = {}
        for ch in chunks:
            get_stats(ch, stats)
        if not stats:
            break
        pair = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))
        if stats[pair] < 2:
            break
        chunks = [merge(ch, pair, 256 + k) for ch in chunks]
        merges.append((pair[0], pair[1], 256 + k))
    return merges, sum(len(ch) for ch in chunks)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_incremental_equals_naive_trainer(corpus: str, pattern: str) -> None:
    text = corpus[:8000]
    expected_merges, expected_tokens = naive_train(text, 256 + 150, pattern)
    tok = train_bpe(text, vocab_size=256 + 150, pattern=pattern, special_tokens=[])
    assert tok.merges == expected_merges
    # the merges applied on the training text reproduce the trainer's compression exactly
    ids = tok.encode(text)
    assert len(ids) == expected_tokens == len(tok.encode_python(text))
    assert len(ids) < 0.6 * len(text.encode())
    assert tok.decode(ids) == text


def test_trained_tokenizer_properties(trained: BPETokenizer, corpus: str) -> None:
    assert trained.vocab_size == 1024
    assert trained.special_tokens == {s: 1024 - 3 + k for k, s in enumerate(SPECIALS)}
    assert trained.eos_token_id == trained.special_tokens["<|endoftext|>"] and trained.chat_template == "chatml"
    held_out = corpus[-50_000:]
    ids = trained.encode(held_out)
    assert ids == trained.encode_python(held_out)
    assert trained.decode(ids) == held_out
    assert len(ids) < 0.45 * len(held_out.encode())  # real compression on unseen Shakespeare
    # every learned token is reachable: it encodes to itself
    assert all(trained._bpe(trained.vocab[new]) == [new] for _, _, new in trained.merges)
    assert trained.encode("<|endoftext|>x<|im_end|>") == [1021, *trained.encode("x"), 1023]


def test_special_token_text_is_not_learned(corpus: str) -> None:
    text = ("<|endoftext|>" + corpus[:3000]) * 4
    tok = train_bpe(text, vocab_size=400, pattern="gpt2")
    assert not any(b"<|" in p or b"|>" in p for i, p in tok.vocab.items() if i not in tok.special_tokens.values())


def test_save_load_roundtrip(trained: BPETokenizer, tmp_path) -> None:
    trained.save(tmp_path)
    state = json.loads((tmp_path / FILE_NAME).read_text())
    assert state["version"] == 1 and state["type"] == "bpe" and state["pattern"] == "gpt4"
    assert state["byte_ids"] == list(range(256)) and len(state["merges"]) == 1024 - 256 - 3
    loaded = Tokenizer.load(tmp_path)
    text = "To be, or not to be: that is the question. 1234 <|im_start|>"
    assert loaded.encode(text) == trained.encode(text)
    assert loaded.vocab == trained.vocab and loaded.eos_token_id == trained.eos_token_id


def test_hf_export_of_trained_tokenizer(trained: BPETokenizer, tmp_path) -> None:
    from transformers import AutoTokenizer

    trained.save_hf(tmp_path)
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    text = shakespeare_text()[-20_000:] + " 1234567 😀 你好\n\n\n   x <|im_end|>"
    assert auto(text, add_special_tokens=False)["input_ids"] == trained.encode(text)
    msgs = [{"role": "user", "content": "Speak, Hamlet."}]
    assert auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        trained.apply_chat_template(msgs) == "<|im_start|>user\nSpeak, Hamlet.<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("text", ["'ſ", "x'ſt", "'LL 'Ve 'K", "'ẞ 'ß ǈ'ǈ", "\r\n\r\n  \n", "12345 678", "a\x04b"])
def test_gpt4_pattern_edge_cases(trained: BPETokenizer, text: str) -> None:
    assert trained.encode(text) == trained.encode_python(text)
    assert trained.decode(trained.encode(text)) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_roundtrip_property_trained(trained: BPETokenizer, text: str) -> None:
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert ids == trained.encode_python(text)


def test_progress_stop_and_errors(corpus: str) -> None:
    seen: list[tuple[int, int]] = []
    tok = train_bpe(corpus[:20_000], vocab_size=600, progress=lambda d, t: seen.append((d, t)),
                    should_stop=lambda: bool(seen) and seen[-1][0] >= 50)
    assert seen and seen[0][1] == 600 - 259
    assert 50 <= len(tok.merges) < 100  # stopped early, still a usable tokenizer
    assert tok.decode(tok.encode("Hello there")) == "Hello there"
    small = train_bpe("abababab", vocab_size=300, special_tokens=[])
    assert small.merges and len(small.merges) < 300 - 256  # ran out of pairs seen twice
    with pytest.raises(ValueError, match="smaller than 256"):
        train_bpe("abc", vocab_size=200)
    with pytest.raises(ValueError, match="empty"):
        train_bpe("", vocab_size=300)


def test_char_tokenizer(corpus: str, tmp_path) -> None:
    tok = CharTokenizer.train(corpus)
    assert tok.chars == sorted(set(corpus)) and tok.vocab_size == len(tok.chars) and tok.chars[0] == "\n"
    assert tok.encode("hi") == [tok.stoi["h"], tok.stoi["i"]]
    text = corpus[:1000]
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match=r"'😀' \(U\+1F600\) is not in this character vocabulary"):
        tok.encode("hi 😀")
    tok.save(tmp_path)
    assert json.loads((tmp_path / FILE_NAME).read_text())["type"] == "char"
    loaded = Tokenizer.load(tmp_path)
    assert isinstance(loaded, CharTokenizer) and loaded.encode(text) == tok.encode(text)
    with_special = CharTokenizer.train("abc<|endoftext|>cab", special_tokens=["<|endoftext|>"])
    assert with_special.vocab_size == 4 and with_special.eos_token_id == 3
    assert with_special.encode("ab<|endoftext|>") == [0, 1, 3]
    assert with_special.decode([0, 3, 2]) == "a<|endoftext|>c"
    with_special.save(tmp_path / "s")
    assert Tokenizer.load(tmp_path / "s").encode("c<|endoftext|>") == [2, 3]
