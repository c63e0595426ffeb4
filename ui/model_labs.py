"""Model tab labs: where a model's memory goes (estimates beside peaks measured here) and its perplexity on a text.

Each handler calls one core service (``llm_core.labs.memory.memory_report`` / ``llm_core.labs.perplexity.perplexity``); bad
input is a warning beside the control and a status line, never an exception over the tab.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from llm_core.labs.memory import REPORT_HEADERS  # a torch-free module; the report itself loads in the handler
from ui.errors import in_range, readable_error, refuse, whole_number
from ui.model_view import _gpt
from ui.models import ModelRegistry

MEMORY_HELP = ("Estimates are counted from the model's config (fp32 training with AdamW). **Measure** runs three "
               "training steps of each kind in a fresh process on this machine (random weights: the memory is the "
               "same) and puts the peak beside the estimate; it takes a while for a large model.")
PPL_HELP = ("Perplexity = exp(average loss per token): lower is better, but it depends on the tokenizer. Bits per "
            "byte divides the same loss by the text's bytes, so models with different tokenizers compare fairly.")
MAX_PPL_CHARS = 50_000  # ~12k tokens: well under a minute on 2 CPU cores for a 135M model; longer: the CLI
DEFAULT_PPL_TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
                    "of foolishness, it was the epoch of belief, it was the epoch of incredulity.")


def _settings(batch: Any, seq: Any, rank: Any, context: int) -> tuple[int, int, int]:
    b = int(in_range(whole_number(batch, "Batch size"), "Batch size", 1, 1024))
    s = int(in_range(whole_number(seq, "Sequence length"), "Sequence length", 1, context))
    r = int(in_range(whole_number(rank, "LoRA rank"), "LoRA rank", 1, 1024))
    return b, s, r


def memory_rows(model_key: str | None, batch: Any, seq: Any, rank: Any, registry: ModelRegistry,
                measure: bool = False, progress: Any = None) -> tuple[Any, str]:
    """(table rows, status) for the model's memory; ``measure`` adds the peaks measured here. Bad settings or a
    model that does not load: a warning and the table as it was."""
    from llm_core.labs.memory import memory_report, report_rows

    try:
        cfg = _gpt(registry.get(model_key).model).config
        b, s, r = _settings(batch, seq, rank, cfg.block_size)
        cb = None if progress is None else (lambda done, total: progress(done / total,
                                                                          desc=f"measured {done} of {total} runs"))
        rep = memory_report(cfg, batch=b, seq=s, rank=r, measure=measure, progress=cb)
    except Exception as e:  # noqa: BLE001 - every failure is shown in words beside the button
        return gr.skip(), refuse(readable_error(e))
    done = "Estimates with the peaks measured on this machine." if measure else "Estimates from the config."
    return report_rows(rep), done


def score_text(model_key: str | None, text: str | None, registry: ModelRegistry, progress: Any = None) -> str:
    """Markdown with the perplexity and bits per byte of the model on ``text``; empty or too-short text (or a model
    that does not load) is a warning and a ⚠️ line, not an exception."""
    if not (text or "").strip():
        return refuse("Type or paste some text to measure perplexity on.")
    if len(text) > MAX_PPL_CHARS:
        return refuse(f"The text has {len(text):,} characters; this panel measures up to {MAX_PPL_CHARS:,} "
                      f"(for a longer file: python -m llm_core perplexity MODEL --text FILE).")
    from llm_core.labs.perplexity import perplexity

    try:
        lm = registry.get(model_key)
        cb = None if progress is None else (lambda done, total: progress(done / total,
                                                                          desc=f"{done:,} of {total:,} tokens"))
        r = perplexity(lm.model, lm.tokenizer, text, progress=cb)
    except Exception as e:  # noqa: BLE001
        return refuse(readable_error(e))
    return (f"**Perplexity {r.perplexity:,.2f}** · **{r.bits_per_byte:.3f} bits per byte** · "
            f"{r.nll_per_token:.3f} nats per token over {r.tokens:,} tokens ({r.n_bytes:,} bytes, "
            f"window {r.block}, stride {r.stride})")


def create_model_labs(model: gr.Dropdown, registry: ModelRegistry) -> dict[str, Any]:
    """The Memory and Perplexity panels under the Model tab's ``model`` dropdown."""
    gr.Markdown("## Memory")
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            batch = gr.Number(1, label="Batch size", precision=0, elem_id="mem-batch")
            seq = gr.Number(256, label="Sequence length (tokens)", precision=0, elem_id="mem-seq")
            rank = gr.Number(16, label="LoRA rank", precision=0, elem_id="mem-rank")
            est_btn = gr.Button("Estimate", variant="primary")
            measure_btn = gr.Button("Measure on this machine")
            mem_status = gr.Markdown()
            gr.Markdown(MEMORY_HELP)
        with gr.Column(scale=3):
            table = gr.Dataframe(headers=REPORT_HEADERS, label="Where the memory goes", interactive=False, wrap=True,
                                 elem_id="memory-table")
    gr.Markdown("## Perplexity")
    with gr.Row():
        with gr.Column(scale=3):
            ppl_text = gr.Textbox(DEFAULT_PPL_TEXT, label="Held-out text", lines=5, elem_id="ppl-text")
        with gr.Column(scale=2):
            ppl_btn = gr.Button("Measure perplexity", variant="primary")
            ppl_out = gr.Markdown(elem_id="ppl-result")
            gr.Markdown(PPL_HELP)

    def _estimate(key, b, s, r):
        return memory_rows(key, b, s, r, registry)

    def _measure(key, b, s, r, progress=gr.Progress()):
        return memory_rows(key, b, s, r, registry, measure=True, progress=progress)

    est_btn.click(_estimate, [model, batch, seq, rank], [table, mem_status])
    measure_btn.click(_measure, [model, batch, seq, rank], [table, mem_status])
    def _score(key, t, progress=gr.Progress()):
        return score_text(key, t, registry, progress)

    ppl_btn.click(_score, [model, ppl_text], ppl_out)
    return dict(memory_table=table, perplexity=ppl_out)
