"""Model tab labs (Memory and Perplexity panels): handlers give numbers for the loaded model, and bad input is a
warning beside the control (no exception, no class names). Tiny checkpoint, no training runs."""

from __future__ import annotations

import re

import pytest

SKIP = {"__type__": "update"}
CLASS_NAME = re.compile(r"\b[A-Z][a-zA-Z]*(Error|Exception)\b")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_memory_panel_rows_for_the_loaded_model(registry):
    from llm_core.labs.memory import REPORT_HEADERS
    from ui.model_labs import memory_rows

    rows, status = memory_rows(None, 2, 32, 4, registry)
    model = registry.get(None).model
    n = sum(p.numel() for p in model.parameters())
    assert all(len(r) == len(REPORT_HEADERS) for r in rows) and status.startswith("Estimates")
    by_name = {r[0]: r for r in rows}
    assert by_name["Parameters"][1] == f"{n:,}"  # a tiny model: the exact count
    assert by_name["Weights fp32"][1] == f"{4 * n / 1024:,.1f} KiB"  # a tiny model
    lora = next(r for r in rows if r[0].startswith("LoRA (batch 2 × 32 tokens, rank 4)"))
    assert "AdamW" in lora[3] and lora[2] == ""  # not measured yet


@pytest.mark.parametrize("batch,seq,rank,expect", [
    (1, 1000, 16, "Sequence length must be between 1 and 128, got 1,000"),
    (None, 32, 16, "Batch size is empty"),
    (1, 32, 2.5, "LoRA rank must be a whole number"),
])
def test_memory_panel_refuses_bad_settings(registry, batch, seq, rank, expect):
    from ui.model_labs import memory_rows

    with pytest.warns(UserWarning, match=re.escape(expect)):
        rows, status = memory_rows(None, batch, seq, rank, registry)
    assert rows == SKIP and status.startswith("⚠️") and expect in status and not CLASS_NAME.search(status)


def test_perplexity_panel(registry):
    from ui.model_labs import score_text

    md = score_text(None, "The quick brown fox jumps over the lazy dog.", registry)
    m = re.search(r"\*\*Perplexity ([\d,.]+)\*\* · \*\*([\d.]+) bits per byte\*\*", md)
    assert m, md
    ppl, bpb = float(m.group(1).replace(",", "")), float(m.group(2))
    assert ppl > 1 and bpb > 0  # an untrained model: high, but a real number
    assert "43 tokens (43 bytes" in md  # no BOS in this char vocabulary: the first character is context only
    with pytest.warns(UserWarning, match="Type or paste some text"):
        assert score_text(None, "   ", registry).startswith("⚠️")
    with pytest.warns(UserWarning, match="too short"):
        short = score_text(None, "a", registry)
    assert short.startswith("⚠️") and not CLASS_NAME.search(short)
    with pytest.warns(UserWarning, match="not in this character vocabulary"):
        assert score_text(None, "Tokyo is 東京.", registry).startswith("⚠️")


def test_model_tab_builds_with_the_labs(registry):
    import gradio as gr

    from ui.model_tab import create_model_tab

    with gr.Blocks():
        parts = create_model_tab(registry)
    assert {"model", "first_look", "memory_table", "perplexity"} <= set(parts)
