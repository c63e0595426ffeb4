"""Chat prompt rendering: SmolLM2's ChatML template, Gemma 3's turns, and history truncation to a token budget.

ChatML (SmolLM2): ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; when the first message is not a
system message the template injects a default system prompt; ``add_generation_prompt`` appends
``<|im_start|>assistant\\n``. Gemma 3: the BOS text, then ``<start_of_turn>{user|model}\\n{content}<end_of_turn>\\n``
per message, content stripped, the system prompt folded into the first user turn, roles alternating.
Tokenizers without a chat template get a plain "User: ..." transcript.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Tokenizer

SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
# Gemma 3's published template (text part): what our "gemma" rendering equals, written by HF export
GEMMA_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n"
)
_PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


# a whole Jinja string literal '<|im_start|>system\n...<|im_end|>\n' (newlines real or escaped as \n): the
# system message a template writes when the conversation has none (SmolLM2's and Qwen2.5's default prompt)
_SYSTEM_LITERAL = re.compile(r"""(['"])<\|im_start\|>system(?:\n|\\n)((?:(?!\1)[^\\]|\\.)*?)<\|im_end\|>(?:\n|\\n)\1""",
                             flags=re.S)
_ROLE_TEST = re.compile(r"""\[['"]role['"]\]\s*[!=]=\s*['"]system['"]|\.role\s*[!=]=\s*['"]system['"]""")


def _unescape_jinja(s: str) -> str:
    """The text of a Jinja string literal's body: \\n, \\', \\" and \\\\ escapes resolved."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s, flags=re.S)


def parse_chat_template(jinja: str) -> tuple[str | None, str | None]:
    """A Jinja chat template -> (kind, default system prompt). Only ChatML is understood (SmolLM2, Qwen2/2.5/3).

    The default system prompt is a literal system message the template writes after testing the first message's
    role (SmolLM2: ``!= 'system'``; Qwen2.5: ``== 'system'`` ... else). Qwen3 has none. Gemma's turns ->
    ("gemma", None)."""
    if START_OF_TURN in jinja and END_OF_TURN in jinja:
        return "gemma", None
    if IM_START not in jinja or IM_END not in jinja:
        return None, None
    m = _SYSTEM_LITERAL.search(jinja)
    default = _unescape_jinja(m.group(2)) if m and _ROLE_TEST.search(jinja) else None
    return "chatml", default


def to_jinja(tok: Tokenizer) -> str | None:
    """The HF Jinja template equal to our rendering (SmolLM2's exact template when its default system is set)."""
    if tok.chat_template == "gemma":
        return GEMMA_TEMPLATE
    if tok.chat_template != "chatml":
        return None
    head = "{% for message in messages %}"
    if tok.default_system_prompt is not None:
        sys_lit = tok.default_system_prompt.replace("\\", "\\\\").replace("'", "\\'")
        head += ("{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
                 + sys_lit + "<|im_end|>\n' }}{% endif %}")
    return (head + "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _check_messages(messages: list[dict]) -> None:
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
            raise ValueError(f"message #{k} must be a dict with a non-empty 'role' string, got {m!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message #{k} ({m['role']}) must have a 'content' string, got {m.get('content')!r}")


def _render_one(tok: Tokenizer, role: str, content: str) -> str:
    if tok.chat_template == "chatml":
        return f"{IM_START}{role}\n{content}{IM_END}\n"
    return f"{_PLAIN_ROLES.get(role, role.capitalize())}: {content}\n\n"


def _generation_prompt(tok: Tokenizer) -> str:
    return f"{IM_START}assistant\n" if tok.chat_template == "chatml" else "Assistant:"


def _special_text(tok: Tokenizer, i: int | None) -> str:
    return next((s for s, j in tok.special_tokens.items() if j == i), "") if i is not None else ""


def _render_gemma(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """Gemma 3: BOS, a system message folded into the first turn, assistant -> "model", content stripped."""
    prefix, turns = "", messages
    if messages and messages[0]["role"] == "system":
        prefix, turns = messages[0]["content"] + "\n\n", messages[1:]
    parts = [_special_text(tok, tok.bos_token_id)]
    for k, m in enumerate(turns):
        if (m["role"] == "user") != (k % 2 == 0):
            raise ValueError(f"Gemma's chat roles must alternate user/assistant/user/...; message #{k} is "
                             f"{m['role']!r}")
        role = "model" if m["role"] == "assistant" else m["role"]
        parts.append(f"{START_OF_TURN}{role}\n{prefix if k == 0 else ''}{m['content'].strip()}{END_OF_TURN}\n")
    if add_generation_prompt:
        parts.append(f"{START_OF_TURN}model\n")
    return "".join(parts)


def apply_chat_template(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render messages as the model's prompt text (same string as transformers' apply_chat_template)."""
    _check_messages(messages)
    if tok.chat_template == "gemma":
        return _render_gemma(tok, messages, add_generation_prompt)
    parts = []
    if messages and messages[0]["role"] != "system" and tok.chat_template == "chatml" and tok.default_system_prompt:
        parts.append(_render_one(tok, "system", tok.default_system_prompt))
    parts += [_render_one(tok, m["role"], m["content"]) for m in messages]
    if add_generation_prompt:
        parts.append(_generation_prompt(tok))
    return "".join(parts)


def render_chat(tok: Tokenizer, messages: list[dict], max_tokens: int, add_generation_prompt: bool = True) -> list[int]:
    """Prompt ids of at most ``max_tokens``: drop the oldest turns (keeping the system prompt and the last
    message); if the last message alone is still too long, keep its end. Raises ValueError when even the
    system prompt does not fit."""
    _check_messages(messages)
    if not messages:
        raise ValueError("render_chat needs at least one message")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    system = messages[:1] if messages[0]["role"] == "system" else []
    history: list[dict] = messages[len(system):-1]
    last: dict | None = messages[-1] if len(messages) > len(system) else None  # None: only a system message

    def encode(kept: list[dict]) -> list[int]:
        k = len(system)
        while k < len(kept) - 1 and kept[k]["role"] == "assistant":  # history starts on a user turn (Gemma needs it)
            k += 1
        kept = kept[:len(system)] + kept[k:]
        return tok.encode(apply_chat_template(tok, kept, add_generation_prompt), allowed_special="all")

    tail = [last] if last is not None else []
    # the fit is monotone in how many old turns we drop: binary search the fewest drops that fit
    lo, hi = 0, len(history)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(encode(system + history[mid:] + tail)) <= max_tokens:
            hi = mid
        else:
            lo = mid + 1
    kept_history = history[lo:]
    while kept_history and kept_history[0]["role"] == "assistant":  # start the history on a user turn
        kept_history = kept_history[1:]
    ids = encode(system + kept_history + tail)
    if len(ids) <= max_tokens:
        return ids
    if last is None or len(encode(system + [dict(last, content="")])) > max_tokens:
        raise ValueError(f"max_tokens={max_tokens} is too small for the system prompt and message framing")
    # keep the end of the last message: smallest start offset that fits
    content = last["content"]
    lo, hi = 0, len(content)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(encode(system + [dict(last, content=content[mid:])])) <= max_tokens:
            hi = mid
        else:
            lo = mid + 1
    return encode(system + [dict(last, content=content[lo:])])
