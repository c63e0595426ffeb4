"""Held-out perplexity and bits per byte of any loaded model on any text, with a sliding window for long text.

Perplexity ``exp(mean nll per token)`` depends on the tokenizer: a model whose tokens are longer predicts fewer,
harder tokens. Bits per byte divides the same total loss (in bits) by the text's UTF-8 bytes instead, so a char
model, a BPE model and SmolLM2 can be compared on one text.

Every text token is scored: like lm-evaluation-harness's rolling log-likelihood, the text is preceded by the
tokenizer's BOS token (else its EOS, GPT-2's document separator), so the first token is predicted too and the bits
cover all of the text's bytes. Without either, the first token is only context and its bytes are left out.

Long text: windows of ``block`` tokens advance by ``stride``; each window scores only the tokens no earlier
window scored, so every token is scored once with at least ``block - stride`` tokens of context (Hugging Face's
"perplexity of fixed-length models" recipe with its max_length = block + 1: it counts the last token, which is
only a label).
``stride == block`` is the fast, non-overlapping variant.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from llm_core.model.gpt import base_gpt

__all__ = ["PerplexityResult", "perplexity", "score_ids", "text_from_bytes", "DEFAULT_BLOCK",
           "MIN_TOKENS"]

DEFAULT_BLOCK = 1024  # window cap: an 8k-context model on a CPU would spend seconds per window for little change
MIN_TOKENS = 2  # fewer text tokens than this is not a measurement


@dataclass
class PerplexityResult:
    tokens: int  # tokens scored
    nll_per_token: float  # nats
    perplexity: float  # exp(nll_per_token)
    bits_per_byte: float  # total nll / ln 2 / n_bytes
    n_bytes: int  # UTF-8 bytes the scored tokens cover
    block: int = 0  # window length used
    stride: int = 0  # window step used
    windows: int = 0
    warnings: list[str] = field(default_factory=list)  # e.g. the text was not UTF-8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_from_bytes(data: bytes, source: str = "text") -> tuple[str, list[str]]:
    """Bytes decoded the way the RAG loaders decode files (UTF-8, UTF-16 by BOM, else the detected encoding),
    with the warnings they give; binary data is a ValueError naming ``source``."""
    from llm_core.textfile import decode_text  # the project's one decoder (the RAG loaders use it too)

    found: list[str] = []
    text = decode_text(data, source, found)
    return text, found


def _prefix_id(tokenizer: Any) -> int | None:
    for name in ("bos_token_id", "eos_token_id"):
        i = getattr(tokenizer, name, None)
        if i is not None:
            return int(i)
    return None


def _device(model: Any) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def score_ids(model: Any, ids: list[int], block: int, stride: int,
              progress: Callable[[int, int], None] | None = None, stop_event: threading.Event | None = None
              ) -> tuple[float, int, int]:
    """(total nll in nats, tokens scored, windows) of ``ids[1:]`` given what precedes each, in windows of ``block``
    tokens every ``stride``; each target is scored once, in the first window that holds it with its context."""
    if len(ids) < 2:
        raise ValueError("need at least 2 tokens to score one")
    if not 1 <= stride <= block:
        raise ValueError(f"stride must be between 1 and the window length {block}, got {stride}")
    N = len(ids)
    total = N - 1  # targets: positions 1 .. N-1
    device = _device(model)
    was_training = model.training
    model.eval()
    nll_sum, scored, windows, begin = 0.0, 0, 0, 0
    try:
        with torch.inference_mode():
            while True:
                if stop_event is not None and stop_event.is_set():
                    raise InterruptedError("perplexity stopped")
                end = min(begin + block, N - 1)  # inputs ids[begin:end] predict ids[begin+1:end+1]
                x = torch.tensor([ids[begin:end]], dtype=torch.long, device=device)  # (1, T)
                y = torch.tensor([ids[begin + 1:end + 1]], dtype=torch.long, device=device)  # (1, T)
                n_new = end - scored  # the targets no earlier window scored are the last n_new
                y[:, :y.size(1) - n_new] = -100
                _, loss = model(x, targets=y, loss_only=True)  # mean over the n_new scored targets
                nll_sum += float(loss.float()) * n_new
                scored, windows = end, windows + 1
                if progress is not None:
                    progress(scored, total)
                if end >= N - 1:
                    break
                begin += stride
    finally:
        model.train(was_training)
    return nll_sum, total, windows


def perplexity(model: Any, tokenizer: Any, text: str | bytes, block: int | None = None, stride: int | None = None,
               progress: Callable[[int, int], None] | None = None,
               stop_event: threading.Event | None = None) -> PerplexityResult:
    """Perplexity and bits per byte of ``model`` on ``text`` (str, or bytes decoded as the RAG loaders do).

    ``block``: window length (default: the model's context, at most DEFAULT_BLOCK); ``stride``: how far each window
    moves (default ``block // 2``). ``progress(scored, total)`` after each window; ``stop_event`` set stops with
    InterruptedError. Bad input (empty or too short text, bad block/stride) is a ValueError in words.
    """
    notes: list[str] = []
    if isinstance(text, (bytes, bytearray)):
        text, notes = text_from_bytes(bytes(text))
        for n in notes:
            warnings.warn(n, stacklevel=2)
    if not isinstance(text, str):
        raise ValueError(f"text must be a string or bytes, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the text is empty: give some text to measure perplexity on")
    cfg = base_gpt(model).config
    ctx = int(cfg.block_size)
    block = min(ctx, DEFAULT_BLOCK) if block is None else int(block)
    if not 2 <= block <= ctx:
        raise ValueError(f"window length (block) must be between 2 and the model's context of {ctx} tokens, "
                         f"got {block}")
    stride = max(1, block // 2) if stride is None else int(stride)
    if not 1 <= stride <= block:
        raise ValueError(f"stride must be between 1 and the window length {block}, got {stride}")

    text_ids = tokenizer.encode(text, allowed_special="none")  # the text as text: "<|endoftext|>" is plain
    if len(text_ids) < MIN_TOKENS:
        raise ValueError(f"the text is too short: it is {len(text_ids)} token(s); perplexity needs at least "
                         f"{MIN_TOKENS} tokens of text")
    prefix = _prefix_id(tokenizer)
    n_text_bytes = len(text.encode("utf-8"))
    if prefix is not None:
        ids, n_bytes = [prefix, *text_ids], n_text_bytes
    else:  # the first token is context only: its bytes are not predicted
        ids, n_bytes = text_ids, max(1, n_text_bytes - len(tokenizer.decode_bytes(text_ids[:1])))
    nll_sum, total, windows = score_ids(model, ids, block, stride, progress, stop_event)
    nll = nll_sum / total
    return PerplexityResult(tokens=total, nll_per_token=nll, perplexity=math.exp(nll),
                            bits_per_byte=nll_sum / math.log(2) / n_bytes, n_bytes=n_bytes, block=block,
                            stride=stride, windows=windows, warnings=notes)
