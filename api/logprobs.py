"""``logprobs`` in OpenAI's two formats, from the token view that ``llm_core.labs.token_view`` records while generating.

- ``/v1/chat/completions`` with ``logprobs: true`` (and ``top_logprobs: 0..20``):
  ``choices[].logprobs.content[] = {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}``;
- ``/v1/completions`` with the legacy ``logprobs: N``: ``{tokens, token_logprobs, top_logprobs, text_offset}``.

The numbers are the raw model distribution, ``log_softmax`` of its logits (what vLLM returns by default): the same
numbers the Chat tab's token view shows as "model". Sampling settings do not change them.
"""

from __future__ import annotations

from typing import Any

from .schemas import APIError, ChatRequest, CompletionRequest

MAX_TOP_LOGPROBS = 20  # OpenAI's limit, and what the recorder keeps per token


def chat_top_logprobs(req: ChatRequest) -> int | None:
    """How many alternatives per token a chat request wants (0..20), or None when it wants no logprobs."""
    top = req.top_logprobs
    if top is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: set \"logprobs\": true as well.", "top_logprobs")
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}; got {top}.", "top_logprobs")
    return (top or 0) if req.logprobs else None


def completion_top_logprobs(req: CompletionRequest) -> int | None:
    """The legacy ``logprobs: N`` of /v1/completions (0..20 alternatives per token), or None."""
    n = req.logprobs
    if n is None:
        return None
    if isinstance(n, bool) or not 0 <= n <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS} (the alternatives per "
                       f"token); got {n!r}.", "logprobs")
    return n


def _entry(text: str, raw: bytes, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(steps: list[Any], top: int) -> dict:
    """``choices[].logprobs`` of a chat completion (or of one streamed chunk) for these token steps."""
    content = []
    for s in steps:
        alts = [_entry(t, b, lp) for t, b, lp in zip(s.top_texts()[:top], s.top_bytes[:top], s.top_logprobs[:top])]
        content.append({**_entry(s.text, s.token_bytes, s.logprob), "top_logprobs": alts})
    return {"content": content, "refusal": None}


def completion_logprobs(steps: list[Any], top: int, offset: int = 0) -> dict:
    """``choices[].logprobs`` of a legacy completion; ``text_offset`` counts characters from ``offset`` (where
    this piece of text starts in the completion)."""
    tokens, offsets = [], []
    for s in steps:
        tokens.append(s.text)
        offsets.append(offset)
        offset += len(s.text)
    tops = [dict(zip(s.top_texts()[:top], s.top_logprobs[:top])) for s in steps]
    return {"tokens": tokens, "token_logprobs": [s.logprob for s in steps], "top_logprobs": tops,
            "text_offset": offsets}
