"""Model tab panel: export the selected model or adapter as a GGUF file with an Ollama Modelfile beside it, for
llama.cpp, Ollama, LM Studio and other local runtimes. The export itself is ``llm_core.weights.export.export_gguf``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ui.errors import readable_error, warn
from ui.models import LORA, ModelRegistry, adapter_base_model

OUTTYPES = [("f32 (exact)", "f32"), ("f16", "f16"), ("q8_0 (8-bit, close)", "q8_0"), ("q4_0 (4-bit, smallest)", "q4_0")]
EXPORT_HELP = ("Writes `<model>-<type>.gguf` and `<model>-<type>.Modelfile` into the studio's `exports` folder. "
               "Run it with `llama-cli -m FILE.gguf`, or `ollama create NAME -f FILE.Modelfile`. An adapter is merged "
               "into its base model first.")


def export_model(key: str | None, outtype: str, registry: ModelRegistry, progress: Any = None) -> str:
    """A status line: where the GGUF and its Modelfile went, or why the model cannot be exported."""
    from llm_core.weights.export import default_out_path, export_gguf
    from ui.settings import data_dir
    from ui.users import workspace

    try:
        entry = registry.entry(key)
        model, adapter = entry.ref, None
        if entry.kind == LORA:
            model, adapter = adapter_base_model(Path(entry.ref)) or registry.default_model, entry.ref
        report = (lambda done, total: progress(done / max(total, 1), desc="writing tensors")) if progress else None
        out = data_dir() / "exports" / default_out_path(model, adapter, outtype).name  # the requester's folder
        workspace().check_room()
        res = export_gguf(model, out, outtype, adapter=adapter, progress=report)
    except (ValueError, FileNotFoundError, OSError) as e:
        msg = readable_error(e)
        warn(msg)
        return f"⚠️ {msg}"
    extra = f" and `{Path(res.modelfile).name}`" if res.modelfile else ""
    return (f"✅ Wrote `{res.path.name}` ({res.bytes / 2**20:,.1f} MB, {res.outtype}){extra} to "
            f"`{res.path.parent}`." + (f" Note: {'; '.join(res.warnings)}." if res.warnings else ""))


def create_export_panel(model: gr.Dropdown, registry: ModelRegistry) -> dict[str, Any]:
    """The Export panel under the Model tab's ``model`` dropdown."""
    gr.Markdown("## Export")
    with gr.Row():
        outtype = gr.Dropdown(OUTTYPES, value="q8_0", label="GGUF type", scale=2, elem_id="export-type")
        button = gr.Button("Export as GGUF + Modelfile", variant="primary", scale=1, elem_id="export-button")
    status = gr.Markdown(EXPORT_HELP, elem_id="export-status")

    def _export(key: str | None, kind: str, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008
        return export_model(key, kind, registry, progress)

    button.click(_export, [model, outtype], status, concurrency_limit=1, concurrency_id="export")
    return {"export_type": outtype, "export_button": button, "export_status": status}
