"""Documents tab helpers: bad input gets its reason (not a red error badge), the supporting sentence is shown."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from ui import documents_tab as dt


def test_add_without_files_and_empty_question_give_the_reason():
    with pytest.raises(ValueError, match="Choose one or more files"):  # _ingest turns it into gr.Warning + status
        dt.ingest_files(None, "my-documents")
    with pytest.raises(ValueError, match="Type a question"):
        list(dt.ask("   ", "my-documents", "hybrid", 3, "grounded", None, registry=None))


def test_tab_builds_with_the_answer_mode_radio_defaulting_to_grounded():
    with gr.Blocks() as demo:
        dt.create_documents_tab(SimpleNamespace(choices=lambda: [], default_key=None))
    (radio,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "doc-answer-mode"]
    assert radio.value == "grounded" and [c[1] for c in radio.choices] == ["grounded", "extractive", "generative"]
    assert any(getattr(b, "elem_id", None) == "doc-ask-status" for b in demo.blocks.values())


def test_answer_markdown_marks_the_supporting_sentence():
    cited = SimpleNamespace(n=2, source="manual.pdf", page=10, text="Remote control. Use 115200 baud. Done.",
                            highlight=[16, 32])
    stream = SimpleNamespace(text="Use 115200 baud. [2]", notes=["The question was cut."], abstained=False,
                             answer_mode="grounded", citations=[cited])
    md = dt.answer_markdown(stream)
    assert md.startswith("Use 115200 baud. [2]")
    assert "**Supporting passage [2]** (manual.pdf, page 10)" in md and "<mark>Use 115200 baud.</mark>" in md
    assert md.rstrip().endswith("*The question was cut.*")
    stream.abstained, stream.citations, stream.text = True, [], "I could not find an answer."
    assert dt.answer_markdown(stream).startswith("🤷 I could not find")
