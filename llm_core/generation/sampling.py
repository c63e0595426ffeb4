"""Pure next-token sampling helpers, each one testable on hand-made logits.

They follow Hugging Face ``transformers``' logits processors exactly (repetition penalty, top-k, top-p), so a
setting means the same thing here as in ``model.generate``. The order used by :func:`sample` is HF's too:
repetition penalty -> temperature -> top-k -> top-p -> softmax -> multinomial.

All helpers take logits of shape (V,) or (B, V) and return a new tensor (inputs are never modified).
"""

from __future__ import annotations

import torch

__all__ = ["apply_repetition_penalty", "top_k_filter", "top_p_filter", "sampling_logits", "sample"]


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens already seen less likely (CTRL paper / HF ``RepetitionPenaltyLogitsProcessor``).

    For every id in ``prev_ids`` ((T,) or (B, T)), a positive logit is divided by ``penalty`` and a negative one is
    multiplied by it, so ``penalty > 1`` always pushes a seen token down; each token is penalised once, however
    often it occurred.
    """
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
    if penalty == 1.0 or prev_ids.numel() == 0:
        return logits
    squeeze = logits.dim() == 1
    lg = logits.unsqueeze(0) if squeeze else logits  # (B, V)
    ids = prev_ids.reshape(1, -1) if prev_ids.dim() == 1 else prev_ids  # (B, T)
    ids = ids.to(device=lg.device, dtype=torch.long)
    score = torch.gather(lg, 1, ids)  # (B, T)
    score = torch.where(score < 0, score * penalty, score / penalty)
    out = lg.scatter(1, ids, score)  # (B, V)
    return out.squeeze(0) if squeeze else out


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits (and any tied with the k-th), set the rest to -inf. ``k <= 0`` = off."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability sums to >= ``p``.

    Same rule as HF ``TopPLogitsWarper``: sort ascending, drop tokens while the cumulative probability of the
    dropped ones stays <= 1 - p, and always keep the most likely token. ``p >= 1`` = off.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)  # (..., V) ascending
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1.0 - p)
    remove_sorted[..., -1:] = False  # the top token always survives
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sampling_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    prev_ids: torch.Tensor | None = None, repetition_penalty: float = 1.0) -> torch.Tensor:
    """The logits of the distribution :func:`sample` draws from, (V,) or (B, V) float: softmax of them is it.

    Filtered tokens are -inf. ``temperature == 0`` (greedy) is the one-hot on the argmax: 0 there, -inf elsewhere.
    The token view (``llm_core.labs.token_view``) shows these next to the raw model distribution.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if prev_ids is not None and repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, prev_ids, repetition_penalty)
    if temperature == 0:
        best = torch.argmax(logits, dim=-1, keepdim=True)  # (..., 1)
        return torch.full_like(logits, float("-inf"), dtype=torch.float32).scatter(-1, best, 0.0)
    logits = logits.float() / temperature
    logits = top_k_filter(logits, top_k)
    return top_p_filter(logits, top_p)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None, prev_ids: torch.Tensor | None = None,
           repetition_penalty: float = 1.0) -> torch.Tensor:
    """Pick the next token(s) from logits (V,) or (B, V): returns a long tensor () or (B,).

    ``temperature == 0`` is greedy (argmax, ties -> lowest id, like ``torch.argmax``); top-k/top-p then change
    nothing, but the repetition penalty still applies, as in HF.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        if prev_ids is not None and repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, prev_ids, repetition_penalty)
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(sampling_logits(logits, temperature, top_k, top_p, prev_ids, repetition_penalty), dim=-1)
    flat = probs.reshape(-1, probs.size(-1))  # (B, V)
    nxt = torch.multinomial(flat, 1, generator=generator).squeeze(-1)  # (B,)
    return nxt.reshape(probs.shape[:-1])
