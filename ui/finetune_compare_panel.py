"""Fine-tune tab panel: before/after. Pick a finished adapter; the same validation prompts are answered by the base
model and by the adapter, side by side, with the exact-match score when the data has exact answers. The work is
``finetune.compare.compare_adapter``; this file only formats it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ui.errors import hide_server_paths, readable_error, refuse
from ui.models import LORA, ModelRegistry

HEADERS = ["line", "prompt", "expected", "base model", "adapter"]
MAX_PROMPTS = 32
HELP = ("The same prompts from the run's validation split (never trained on) answered by the base model (adapter "
        "off) and by the adapter, greedy decoding. When the answers in the data are exact (JSON like the demo's, or "
        "short labels), each answer is marked ✅/❌ and the exact-match score is shown. About two answers per prompt "
        "per few seconds on a CPU.")


def adapter_choices(registry: ModelRegistry) -> list[tuple[str, str]]:
    return [(e.label, e.key) for e in registry.entries() if e.kind == LORA]


def _pct(score: float, n: int) -> str:
    return f"{round(score * n)}/{n} ({score:.0%})"


def comparison_markdown(res: Any) -> str:
    """The headline: where the prompts came from and, with a metric, base vs adapter scores."""
    n = len(res.rows)
    head = f"**{n} prompt{'s' if n != 1 else ''}** from {res.source}"
    if n < res.n_available:
        head += f" (the first {n} of {res.n_available})"
    if res.metric is None:
        return head + ".\n\nThe answers in this data are free-form, so there is no exact score: compare them by reading."
    return (f"{head}.\n\n| | {res.metric} |\n|---|---|\n| base model | {_pct(res.base_score, n)} |\n"
            f"| with the adapter | {_pct(res.adapter_score, n)} |")


def _mark(ok: bool | None, text: str) -> str:
    return text if ok is None else ("✅ " if ok else "❌ ") + text


def comparison_table(res: Any) -> list[list[Any]]:
    return [[r.line, r.prompt, r.reference, _mark(r.base_ok, r.base), _mark(r.adapter_ok, r.adapter)]
            for r in res.rows]


def run_comparison(key: str | None, n: Any, registry: ModelRegistry, progress: Any = None) -> tuple[str, Any]:
    """(headline markdown, table rows); a refusal in words when no adapter is chosen or it cannot be compared."""
    from finetune.compare import compare_adapter

    try:
        if not key:
            raise ValueError("Choose an adapter to compare (finished fine-tuning runs are listed).")
        entry = registry.entry(key)
        if entry.kind != LORA:
            raise ValueError("Choose a LoRA adapter: the comparison is the base model with and without it.")
        count = int(n or 0)
        if not 1 <= count <= MAX_PROMPTS:
            raise ValueError(f"Prompts must be a whole number from 1 to {MAX_PROMPTS}.")
        lm = registry.get(key)  # the Chat tab's copy: one adapter load, switched off/on per answer under its lock
        report = (lambda done, total: progress(done / total, desc=f"answer {done} of {total}")) if progress else None
        res = compare_adapter(Path(entry.ref), count, switch=lm.adapter, tokenizer=lm.tokenizer,
                              generating=lm.generating, on_progress=report)
    except (ValueError, FileNotFoundError, OSError) as e:
        return refuse(hide_server_paths(readable_error(e))), gr.update()
    return comparison_markdown(res), comparison_table(res)


def create_compare_panel(registry: ModelRegistry) -> dict[str, Any]:
    with gr.Accordion("Before / after: base model vs adapter", open=False):
        gr.Markdown(HELP)
        with gr.Row():
            pick = gr.Dropdown([], label="Adapter", elem_id="ft-cmp-adapter", scale=3,
                               info="finished fine-tuning runs (click to refresh the list)")
            n = gr.Number(8, label="Prompts", precision=0, minimum=1, maximum=MAX_PROMPTS, elem_id="ft-cmp-n",
                          scale=1)
            go = gr.Button("Compare", elem_id="ft-cmp-go", scale=1)
        summary = gr.Markdown(elem_id="ft-cmp-summary")
        table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="ft-cmp-table")

    def clicked(key: str | None, count: Any, request: gr.Request,
                progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
        return run_comparison(key, count, registry.for_request(request), progress)  # this user's adapters only

    def listed(request: gr.Request) -> Any:
        return gr.update(choices=adapter_choices(registry.for_request(request)))

    go.click(clicked, [pick, n], [summary, table])
    pick.focus(listed, None, pick, queue=False)
    return dict(pick=pick, go=go, summary=summary, table=table)
