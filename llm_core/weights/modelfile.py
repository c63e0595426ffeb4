"""Ollama ``Modelfile`` for an exported GGUF: the chat format as a Go template, end tokens and default sampling.

Ollama does not run the GGUF's Jinja ``tokenizer.chat_template``; it renders its own Go ``TEMPLATE``. We write the
classic ``.System`` / ``.Prompt`` / ``.Response`` form (Ollama renders it once per user/assistant turn and stops
the last turn at ``{{ .Response }}``), so that it produces exactly the text our chat template renders
(:func:`llm_core.tokenizer.chat_template.apply_chat_template`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_core.generation.generate import GenerationConfig

__all__ = ["ollama_template", "stop_strings", "modelfile_text", "write_modelfile"]

# ChatML (SmolLM2): <|im_start|>{role}\n{content}<|im_end|>\n per message, then <|im_start|>assistant\n
CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}{{ if .Response }}<|im_end|>\n{{ end }}"
)
# Gemma 3: a system prompt folds into the first user turn; the reply's role is "model". No "<bos>" here: llama.cpp
# adds it when it tokenizes (the GGUF's add_bos_token), as our renderer's leading "<bos>" does
GEMMA_TEMPLATE = (
    "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
    "<start_of_turn>model\n{{ .Response }}{{ if .Response }}<end_of_turn>\n{{ end }}"
)
# models without a chat template: our plain "User: ...\n\n" transcript, generation prompt "Assistant:"
PLAIN_TEMPLATE = (
    "{{ if .System }}System: {{ .System }}\n\n{{ end }}"
    "{{ if .Prompt }}User: {{ .Prompt }}\n\n{{ end }}"
    "Assistant:{{ if .Response }} {{ .Response }}\n\n{{ end }}"
)


def ollama_template(tokenizer: Any) -> str:
    """The Go template for this tokenizer's chat format (ChatML, Gemma's turns or our plain transcript)."""
    kind = getattr(tokenizer, "chat_template", None)
    return {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE}.get(kind, PLAIN_TEMPLATE)


def stop_strings(tokenizer: Any) -> list[str]:
    """Text that ends a reply: the end-of-turn / end-of-sequence tokens the vocabulary has (what our generate
    stops on), plus the next "User:" turn for the plain transcript."""
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    out = [s for s in ("<|im_end|>", "<end_of_turn>", "<|endoftext|>") if s in specials]
    eos = getattr(tokenizer, "eos_token_id", None)
    for s, i in specials.items():
        if i == eos and s not in out:
            out.append(s)
    if getattr(tokenizer, "chat_template", None) not in ("chatml", "gemma"):
        out.append("User:")
    return out


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile value cannot contain three double quotes (""")')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, tokenizer: Any, config: GenerationConfig | None, context: int) -> str:
    """The Modelfile for ``gguf_name`` (a file name beside it). Sampling settings are written out even when they
    mean "off" (top_k 0, top_p 1, repeat_penalty 1): Ollama's own defaults (40, 0.9, 1.1) would differ."""
    cfg = config or GenerationConfig()
    lines = [f"FROM ./{gguf_name}", "", f"TEMPLATE {_quote(ollama_template(tokenizer))}"]
    system = getattr(tokenizer, "default_system_prompt", None)
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    lines.append("")
    lines += [f'PARAMETER stop "{s}"' for s in stop_strings(tokenizer)]
    lines += [f"PARAMETER temperature {cfg.temperature:g}", f"PARAMETER top_k {cfg.top_k}",
              f"PARAMETER top_p {cfg.top_p:g}", f"PARAMETER repeat_penalty {cfg.repetition_penalty:g}",
              f"PARAMETER num_ctx {context}"]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: str | Path, tokenizer: Any, config: GenerationConfig | None, context: int) -> Path:
    """Write ``<stem>.Modelfile`` beside the GGUF (atomically); ``ollama create NAME -f <it>`` imports the model."""
    from llm_core.atomic import write_text

    gguf_path = Path(gguf_path)
    path = gguf_path.with_name(gguf_path.stem + ".Modelfile")
    write_text(path, modelfile_text(gguf_path.name, tokenizer, config, context))
    return path
