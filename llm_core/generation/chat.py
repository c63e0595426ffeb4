"""Chat on top of generation: prompt building with history truncation, and a ``ChatSession`` for the CLI and UI.

Rendering and truncation live in :mod:`llm_core.tokenizer.chat_template` (``render_chat``); this module adds
the system prompt handling and the context budget (the model's window minus room for the reply).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from llm_core.generation.generate import GenerationConfig, GenerationStats, kept_ids, stream_generate
from llm_core.labs.token_view import TokenRecorder, TokenView
from llm_core.tokenizer.chat_template import render_chat

__all__ = ["build_chat_prompt", "ChatSession", "ChatDefaults", "chat_defaults"]


@dataclass
class ChatDefaults:
    """What a model ships with for chat: the system prompt its template inserts when none is given, and its
    sampling settings. Small models are sensitive to both: SmolLM2-135M answers "What is the capital of France?"
    correctly with its own system prompt and garbles it under a generic one."""

    system: str | None
    config: GenerationConfig


def chat_defaults(model, tokenizer) -> ChatDefaults:  # noqa: ANN001
    """The model's own defaults (see :class:`ChatDefaults`); ours (:class:`GenerationConfig`) where it has none."""
    shipped = getattr(model, "generation_config", None)
    config = dataclasses.replace(shipped) if shipped is not None else GenerationConfig()
    return ChatDefaults(getattr(tokenizer, "default_system_prompt", None), config)


def build_chat_prompt(tokenizer, messages: list[dict], system: str | None = None,  # noqa: ANN001
                      max_prompt_tokens: int | None = None) -> list[int]:
    """Prompt ids for ``messages`` ([{"role": "user"|"assistant"|"system", "content": str}, ...]) ending with the
    assistant generation prompt. ``system`` replaces a leading system message (None keeps it, or lets the
    template use its default). The oldest turns are dropped to fit ``max_prompt_tokens``; the system prompt and
    the last message are kept (the last one cut from its start if it alone is too long)."""
    msgs = list(messages)
    if not msgs:
        raise ValueError("build_chat_prompt needs at least one message")
    if system is not None:
        if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system":
            msgs = msgs[1:]
        msgs = [{"role": "system", "content": system}] + msgs
    if max_prompt_tokens is None:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        return tokenizer.encode(text, allowed_special="all")
    return render_chat(tokenizer, msgs, max_prompt_tokens, add_generation_prompt=True)


class ChatSession:
    """A conversation with one model: keeps the history, truncates it to the context, streams replies.

    ``stream(text)`` yields the reply as text pieces and appends it to the history when the stream ends (also
    when it is stopped early: the partial reply is what the user saw). ``last_stats`` describes the last reply;
    with ``record_tokens``, ``last_view`` is its token view (``llm_core.labs.token_view``), recorded while generating.
    """

    def __init__(self, model, tokenizer, system: str | None = None,  # noqa: ANN001
                 config: GenerationConfig | None = None, context_tokens: int | None = None,
                 record_tokens: bool = False) -> None:
        """``context_tokens`` caps prompt + reply below the model's window (a shorter history = a faster first
        token on a CPU); None uses the whole window."""
        self.model, self.tokenizer = model, tokenizer
        self.context_tokens = context_tokens
        self.system = system
        self.config = config or chat_defaults(model, tokenizer).config
        self.record_tokens = record_tokens
        self.messages: list[dict] = []
        self.last_stats = GenerationStats()
        self.last_view: TokenView | None = None

    def reset(self) -> None:
        self.messages = []
        self.last_stats = GenerationStats()
        self.last_view = None

    @property
    def max_prompt_tokens(self) -> int:
        """The context window minus room for a reply (at least a quarter of the window stays for the prompt)."""
        ctx = int(self.model.config.block_size)
        if self.context_tokens is not None:
            ctx = max(1, min(ctx, self.context_tokens))
        return max(ctx // 4, ctx - self.config.max_new_tokens)

    def prompt_ids(self, user_text: str) -> list[int]:
        msgs = self.messages + [{"role": "user", "content": user_text}]
        return build_chat_prompt(self.tokenizer, msgs, system=self.system, max_prompt_tokens=self.max_prompt_tokens)

    def stream(self, user_text: str, stop_event: threading.Event | None = None) -> Iterator[str]:
        if not isinstance(user_text, str) or not user_text.strip():
            raise ValueError("the message is empty")
        ids = self.prompt_ids(user_text)
        stats = GenerationStats()
        self.last_stats = stats
        return self._stream(user_text, ids, stats, stop_event)

    def _stream(self, user_text: str, ids: list[int], stats: GenerationStats,
                stop_event: threading.Event | None) -> Iterator[str]:
        pieces: list[str] = []
        recorder = TokenRecorder(self.tokenizer, self.config) if self.record_tokens else None
        self.last_view = None
        stream = stream_generate(self.model, self.tokenizer, ids, self.config, stop_event, stats, observe=recorder)
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
        finally:
            self.messages += [{"role": "user", "content": user_text},
                              {"role": "assistant", "content": "".join(pieces).strip()}]
            if recorder is not None:
                self.last_view = recorder.view(ids, kept_ids(self.tokenizer, stream, "".join(pieces)))

    def send(self, user_text: str) -> str:
        """The whole reply at once."""
        return "".join(self.stream(user_text))
