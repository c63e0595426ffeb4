"""Chunking: sized in the embedding model's own tokens, exact offsets, overlap, boundaries, pages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.chunking import chunk_document, chunk_span, regex_token_starts, split_sentences
from rag.embed import resolve_model_path
from rag.loaders import LoadedDocument, PageSpan
from tests.fixtures.rag.docs import play_scenes


@pytest.fixture(scope="module")
def minilm():
    """The embedding model's WordPiece tokenizer (tokenizer.json alone: no torch needed)."""
    from pathlib import Path

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(resolve_model_path("all-MiniLM-L6-v2")) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()

    def starts(text):
        return sorted({s for s, e in tok.encode(text, add_special_tokens=False).offsets if e > s})

    def count(text):
        return len(tok.encode(text, add_special_tokens=False).ids)

    return starts, count


def doc_of(text, pages=None):
    return LoadedDocument("t.txt", text, pages or [PageSpan(None, 0, len(text))], "txt")


def test_chunks_fit_the_model_and_cover_the_text(minilm):
    starts, count = minilm
    text = "\n\n".join(t for _, t in play_scenes("tragedies/macbeth")[:3])
    chunks = chunk_document(doc_of(text), starts, size=128, overlap=16)
    assert len(chunks) > 10
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert count(c.text) <= 128  # an independent count with the real tokenizer
        assert c.n_tokens == count(c.text)
    covered = [False] * len(text)
    for c in chunks:
        covered[c.start : c.end] = [True] * (c.end - c.start)
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    assert [c.index for c in chunks] == list(range(len(chunks)))
    sizes = [c.n_tokens for c in chunks]
    assert sum(sizes) / len(sizes) > 64  # pieces are merged, not one sentence per chunk


def test_prefers_paragraph_then_sentence_boundaries(minilm):
    starts, _ = minilm
    paras = [" ".join(f"Paragraph {p} sentence {s} is here." for s in range(6)) for p in range(6)]
    text = "\n\n".join(paras)
    chunks = chunk_document(doc_of(text), starts, size=100, overlap=0)
    for c in chunks:
        assert c.text.endswith("here.")  # never cut inside a sentence
    # paragraphs of ~40 tokens: two fit in a chunk of 100, so each chunk is whole paragraphs
    assert all(c.text.startswith("Paragraph") and c.text.count("sentence 0 ") in (1, 2) for c in chunks)
    assert len(chunks) == 3


def test_overlap_repeats_trailing_sentences(minilm):
    starts, count = minilm
    text = " ".join(f"Sentence number {i} talks about thing {i}." for i in range(60))
    chunks = chunk_document(doc_of(text), starts, size=64, overlap=20)
    assert len(chunks) > 3
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "consecutive chunks should overlap"
        assert count(text[b.start : a.end]) <= 20
        assert b.start > a.start and b.end > a.end  # progress


def test_unbreakable_text_is_cut_by_tokens(minilm):
    starts, count = minilm
    text = "x" * 3000 + " tail"
    chunks = chunk_document(doc_of(text), starts, size=50, overlap=0)
    assert all(count(c.text) <= 50 for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_chunks_stay_within_pages():
    text = "Page one words. " * 30 + "\n\n" + "Second page words. " * 30
    split = text.index("\n\n")
    pages = [PageSpan(1, 0, split), PageSpan(2, split + 2, len(text))]
    chunks = chunk_document(doc_of(text, pages), regex_token_starts, size=40, overlap=8)
    for c in chunks:
        span = pages[c.page - 1]
        assert span.start <= c.start < c.end <= span.end
    assert {c.page for c in chunks} == {1, 2}


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        chunk_span("abc", 0, 3, [0], size=10, overlap=10)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab c.\n!é")), max_size=600), st.integers(2, 40), st.integers(0, 10))
def test_property_invariants(text, size, overlap):
    overlap = min(overlap, size - 1)
    starts = regex_token_starts(text)
    chunks = chunk_document(doc_of(text), regex_token_starts, size=size, overlap=overlap)
    for c in chunks:
        assert c.text == text[c.start : c.end] and c.text.strip() == c.text and c.text
        assert c.n_tokens <= size
    for a, b in zip(chunks, chunks[1:]):
        assert b.start > a.start and b.end > a.end
    tokens_in_chunks = {s for c in chunks for s in starts if c.start <= s < c.end}
    assert tokens_in_chunks == set(starts)  # no token is lost


def test_split_sentences():
    text = 'He said "Go." Then he left!  Why?\n\nNew paragraph without end'
    got = [text[a:b] for a, b in split_sentences(text)]
    assert got == ['He said "Go."', "Then he left!", "Why?", "New paragraph without end"]


@pytest.mark.parametrize(("text", "want"), [
    ("The project lead is Dr. Ines Marlow. She builds rockets.", ["The project lead is Dr. Ines Marlow.",
                                                                 "She builds rockets."]),
    ("Use a tool, e.g. a wrench. Mr. Smith agrees.", ["Use a tool, e.g. a wrench.", "Mr. Smith agrees."]),
    ("Dr. Who. He came 1st. Then left.", ["Dr. Who.", "He came 1st.", "Then left."]),  # "1st" is no title
    ("Ask the doctor.\n\nDr.\n\nNext", ["Ask the doctor.", "Dr.", "Next"]),  # a paragraph break still splits
])
def test_split_sentences_keeps_titles_and_shorthands_inside_a_sentence(text, want):
    assert [text[a:b] for a, b in split_sentences(text)] == want
