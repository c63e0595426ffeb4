"""The Gradio app's layout: one ``create_X_tab`` builder per tab and ``create_ui`` that assembles them.

No ML here: handlers call ``llm_core``, ``rag`` and ``finetune``. Heavy imports (torch, the packages) happen
inside handlers, so building the UI is fast and the first page shows before any model is loaded.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import gradio as gr

from ui.chat_store import browser_secret
from ui.chat_tab import create_chat_tab
from ui.documents_tab import create_documents_tab
from ui.finetune_tab import create_finetune_tab
from ui.jobs import JOBS, JobManager
from ui.model_tab import create_model_tab
from ui.models import ModelRegistry
from ui.pretrain_tab import create_pretrain_tab
from ui.settings import Settings, data_dir, parse_settings
from ui.tokenizer_tab import create_tokenizer_tab
from ui.users import end_session, shared_deployment, sweep_sessions, workspace

ASSETS = Path(__file__).resolve().parents[1] / "assets"

__all__ = ["create_ui", "launch_kwargs", "Settings", "parse_settings", "ModelRegistry", "JobManager", "JOBS",
           "create_chat_tab", "create_documents_tab", "create_finetune_tab", "create_pretrain_tab",
           "create_tokenizer_tab", "create_model_tab", "workspace"]


def _header() -> str:
    logo = ""
    svg = ASSETS / "logo.svg"
    if svg.is_file():
        logo = f'<img src="data:image/svg+xml;base64,{base64.b64encode(svg.read_bytes()).decode()}" ' \
               f'width="44" height="44" alt="">'
    return (f'<div id="studio-header">{logo}<div><h1>LLM Scratch Studio</h1>'
            "<p>Chat with, inspect, pretrain and LoRA-fine-tune a GPT built from scratch in PyTorch. "
            "Everything here is real: real weights, real retrieval, real training.</p></div></div>")


def create_ui(settings: Settings | None = None, registry: ModelRegistry | None = None,
              jobs: JobManager | None = None) -> gr.Blocks:
    """Build the whole app (no model is loaded here; ``settings.preload`` starts a background load)."""
    settings = settings or Settings(preload=False)
    registry = registry or ModelRegistry(settings.model)
    jobs = jobs or JOBS
    if settings.preload:
        registry.preload_default()
    with gr.Blocks(title="LLM Scratch Studio", fill_width=True) as demo:
        gr.HTML(_header())
        with gr.Tabs():
            with gr.Tab("💬 Chat", id="chat"):
                chat = create_chat_tab(registry, secret=browser_secret(data_dir()))
            with gr.Tab("📄 Documents", id="documents"):
                docs = create_documents_tab(registry, private=settings.auth is not None or shared_deployment(),
                                            remote_state=chat["remote"]["state"], jobs=jobs)
            with gr.Tab("🎯 Fine-tune", id="finetune"):
                create_finetune_tab(registry, jobs)
            with gr.Tab("🏋️ Pretrain", id="pretrain"):
                create_pretrain_tab(registry, jobs)
            with gr.Tab("🔤 Tokenizer", id="tokenizer"):
                create_tokenizer_tab(registry, jobs)
            with gr.Tab("🔬 Model", id="model") as model_tab:
                model_parts = create_model_tab(registry)
        model_tab.select(**model_parts["first_look"])
        demo.load(**chat["on_load"])  # the browser's own chats and settings back after a reload
        demo.load(**chat["on_load_remote"])  # and its OpenAI-compatible server, if it uses one
        demo.load(**docs["on_load"], queue=False)  # collections made in another session or by the CLI
        if shared_deployment():  # a public Space: each session's scratch folder goes when its tab closes
            sweep_sessions()
            demo.unload(_end_session)
    demo.studio_registry = registry  # type: ignore[attr-defined]  # for tests and app.py
    demo.studio_jobs = jobs  # type: ignore[attr-defined]
    return demo


def _end_session(request: gr.Request) -> None:
    end_session(request)


def launch_kwargs(settings: Settings) -> dict[str, Any]:
    """Arguments for ``demo.launch`` (Gradio 6 takes theme and css here, not in ``gr.Blocks``)."""
    css = (ASSETS / "style.css").read_text() if (ASSETS / "style.css").is_file() else None
    return dict(server_name=settings.host, server_port=settings.port, auth=settings.auth, share=settings.share,
                theme=gr.themes.Soft(primary_hue="indigo", secondary_hue="purple"), css=css,
                auth_message="LLM Scratch Studio: log in with the user and password set by STUDIO_USER / "
                             "STUDIO_PASSWORD." if settings.auth else None,
                favicon_path=str(ASSETS / "logo.svg") if (ASSETS / "logo.svg").is_file() else None,
                show_error=True)
