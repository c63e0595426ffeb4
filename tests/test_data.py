"""Corpus reading, token memmaps, train/val split and batch sampling (llm_core/training/data.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_core.tokenizer import CharTokenizer
from llm_core.training.data import (
    TokenData,
    encode_text,
    markdown_play_to_text,
    prepare_dataset,
    read_text_corpus,
    shakespeare_text,
    token_dtype,
    write_token_split,
)


def test_markdown_play_to_text_strips_markup():
    md = ("# Macbeth\n\n## ACT I\n\n### SCENE I. A desert place.\n\n_Thunder and lightning. Enter three Witches_\n\n"
          "**First Witch**  \nWhen shall we three meet again  \nIn thunder, lightning, or in rain?\n\n\n\n"
          "_\\[Aside]_  \n*[He draws his sword.]*\n**ALL**  \nFair is foul, and foul is fair:  \n")
    assert markdown_play_to_text(md) == (
        "Macbeth\n\nACT I\n\nSCENE I. A desert place.\n\nThunder and lightning. Enter three Witches\n\n"
        "First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n"
        "[Aside]\n[He draws his sword.]\nALL:\nFair is foul, and foul is fair:\n")


def test_shakespeare_corpus_is_plain_text_of_all_plays():
    text = shakespeare_text()
    assert 4_500_000 < len(text) < 5_500_000
    for needle in ("HAMLET:\nTo be, or not to be", "MACBETH:", "KING LEAR:", "Fair is foul, and foul is fair"):
        assert needle in text
    for markup in ("**", "_", "#", "\\"):
        assert markup not in text
    assert "\n\n\n" not in text


def test_read_text_corpus_files_folders_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.md").write_text("second file\n")
    (sub / "c.bin").write_bytes(b"\x00\x01\x02")  # not a text suffix: ignored inside folders
    (sub / "d.txt").write_bytes("caf\xe9 latin-1 na\xefve text, long enough to detect\n".encode("latin-1"))
    text = read_text_corpus(tmp_path)
    assert text.index("first file") < text.index("second file")
    assert "café latin-1 naïve" in text
    assert read_text_corpus([tmp_path / "a.txt"]) == "first file\n"

    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_text_corpus(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt: file is empty"):
        read_text_corpus(tmp_path / "empty.txt")
    (tmp_path / "img.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ValueError, match="img.txt: looks like a binary file"):
        read_text_corpus(tmp_path / "img.txt")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no text files"):
        read_text_corpus(empty_dir)


def test_token_split_memmap_roundtrip(tmp_path):
    ids = np.arange(1000) % 97
    meta = write_token_split(ids, tmp_path, vocab_size=97, val_fraction=0.1)
    assert (meta.train_tokens, meta.val_tokens, meta.dtype) == (900, 100, "uint16")
    data = TokenData(tmp_path)
    np.testing.assert_array_equal(data.splits["train"], ids[:900])
    np.testing.assert_array_equal(data.splits["val"], ids[900:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no temp files left
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32

    big = tmp_path / "big"
    ids32 = np.array([0, 70_000, 5, 69_999] * 10)
    write_token_split(ids32, big, vocab_size=70_001, val_fraction=0.5)
    d32 = TokenData(big)
    assert d32.splits["train"].dtype == np.uint32
    np.testing.assert_array_equal(np.concatenate([d32.splits["train"], d32.splits["val"]]), ids32)
    with pytest.raises(ValueError, match="corpus too small"):
        write_token_split(np.arange(5), tmp_path / "small", vocab_size=10, val_fraction=0.1)


def test_get_batch_contiguous_shifted_and_rank_slices(tmp_path):
    ids = np.arange(5000) % 1000  # each block is a run of consecutive numbers (mod 1000)
    write_token_split(ids, tmp_path, vocab_size=1000, val_fraction=0.2)
    data = TokenData(tmp_path)
    train = np.asarray(data.splits["train"])
    x, y = data.get_batch("train", 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64 and x.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        start = int(np.where(train == row_x[0])[0][0])  # values repeat every 1000: find the block
        found = any(np.array_equal(train[s:s + 16], row_x) and np.array_equal(train[s + 1:s + 17], row_y)
                    for s in range(start, len(train) - 16, 1000))
        assert found
    # two ranks with the same seed see exactly the rows of one process with the global batch
    full_x, _ = data.get_batch("train", 6, 16, torch.Generator().manual_seed(3))
    r0, _ = data.get_batch("train", 3, 16, torch.Generator().manual_seed(3), rank=0, world_size=2)
    r1, _ = data.get_batch("train", 3, 16, torch.Generator().manual_seed(3), rank=1, world_size=2)
    assert torch.equal(torch.cat([r0, r1]), full_x)
    # the val split only ever yields val tokens
    vx, _ = data.get_batch("val", 4, 16, torch.Generator().manual_seed(1))
    assert set(vx.flatten().tolist()) <= set(np.asarray(data.splits["val"]).tolist())
    with pytest.raises(ValueError, match="block_size"):
        data.get_batch("val", 1, 2000)
    with pytest.raises(ValueError, match="unknown split"):
        data.get_batch("test", 1, 4)


def test_encode_in_chunks_matches_whole_text():
    text = ("line one\nline two is longer\n" * 50)
    tok = CharTokenizer.train(text)
    seen = []
    ids = encode_text(text, tok, progress=lambda d, t: seen.append((d, t)), chunk_chars=37)
    assert ids.tolist() == tok.encode(text) and ids.dtype == np.uint16
    assert len(seen) > 10 and seen[-1] == (len(text), len(text))


def test_prepare_dataset_is_cached(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 40)
    data, tok = prepare_dataset(str(corpus), "char", tmp_path / "cache", val_fraction=0.25)
    assert data.meta.train_tokens + data.meta.val_tokens == len(corpus.read_text())
    assert tok.decode(np.asarray(data.splits["val"]).tolist()).endswith("question\n")

    import llm_core.training.data as data_mod

    monkeypatch.setattr(data_mod, "encode_text", lambda *a, **k: pytest.fail("re-encoded a cached corpus"))
    again, tok2 = prepare_dataset(str(corpus), "char", tmp_path / "cache", val_fraction=0.25)
    assert again.folder == data.folder and tok2.to_state() == tok.to_state()
    with pytest.raises(ValueError, match="bpe:N"):
        prepare_dataset(str(corpus), "bpe:lots", tmp_path / "cache2")


def test_prepare_dataset_with_trained_bpe_roundtrips(tmp_path):
    corpus = tmp_path / "c.txt"
    text = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n" * 30
    corpus.write_text(text)
    data, tok = prepare_dataset(str(corpus), "bpe:300", tmp_path / "cache", val_fraction=0.1)
    assert tok.vocab_size <= 300 and data.vocab_size == tok.vocab_size
    ids = np.concatenate([data.splits["train"], data.splits["val"]]).tolist()
    assert tok.decode(ids) == text  # the split is a cut of one id stream: nothing lost or added
    assert len(ids) < len(text) / 2  # merges were learned and used
