"""What the model considered at each token of a reply: its probability, the top alternatives, and what the
sampling knobs did to that distribution.

Two distributions per step, both from the model's next-token logits:

- the **raw** one, ``log_softmax(logits)``: what the model itself believes (this is what the OpenAI API's
  ``logprobs`` return, as vLLM does by default);
- the **sampled** one: what the token was actually drawn from after repetition penalty, temperature, top-k and
  top-p. It is computed by :func:`llm_core.generation.sampling.sampling_logits`, the very function ``sample`` draws from.

:class:`TokenRecorder` is a ``stream_generate`` observer: it records every step while the reply is generated, so
no second forward pass is needed. :func:`score_tokens` does the same for given tokens with one teacher-forced
forward pass (a reply from elsewhere, or a check of the recording). :func:`reshape` re-applies any temperature /
top-k / top-p to one step's full logits (:func:`token_logits`), which is how the Chat tab shows what each knob does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from llm_core.generation.generate import GenerationConfig
from llm_core.generation.sampling import sampling_logits

__all__ = ["TOP_N", "TokenStep", "TokenView", "TokenRecorder", "Reshaped", "score_tokens", "token_logits",
           "reshape", "token_bytes"]

TOP_N = 20  # alternatives recorded per token: OpenAI's top_logprobs allows up to 20


def token_bytes(tokenizer, token_id: int) -> bytes:  # noqa: ANN001 - duck-typed tokenizer
    """The bytes of one token (b"" for ids past the tokenizer, like Qwen's padded embedding rows)."""
    n = getattr(tokenizer, "vocab_size", None)
    if isinstance(n, int) and not 0 <= token_id < n:
        return b""
    piece = getattr(tokenizer, "id_to_piece", None)
    return piece(token_id) if piece is not None else tokenizer.decode_bytes([token_id])


@dataclass
class TokenStep:
    """One generated token and what the model considered instead. Log-probabilities are natural logs; -inf in
    ``top_sampled_logprobs`` means the knobs ruled that alternative out."""

    token_id: int
    token_bytes: bytes
    logprob: float  # raw model distribution
    sampled_logprob: float  # the distribution it was drawn from
    top_ids: list[int]  # most likely first, under the raw distribution
    top_bytes: list[bytes]
    top_logprobs: list[float]
    top_sampled_logprobs: list[float]

    @property
    def text(self) -> str:
        return self.token_bytes.decode("utf-8", errors="replace")

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    @property
    def sampled_prob(self) -> float:
        return math.exp(self.sampled_logprob)

    def top_texts(self) -> list[str]:
        return [b.decode("utf-8", errors="replace") for b in self.top_bytes]


@dataclass
class TokenView:
    """A reply token by token, with the prompt and the sampling settings it was generated with."""

    prompt_ids: list[int]
    steps: list[TokenStep] = field(default_factory=list)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    @property
    def token_ids(self) -> list[int]:
        return [s.token_id for s in self.steps]

    def prev_ids(self, i: int) -> list[int]:
        """The ids before step ``i`` (what the model had seen, and what the repetition penalty looks at)."""
        return self.prompt_ids + self.token_ids[:i]


def _score_step(tokenizer, logits: torch.Tensor, prev_ids: torch.Tensor | None, token_id: int,  # noqa: ANN001
                cfg: GenerationConfig, top_n: int) -> TokenStep:
    """logits (V,) of one position -> its :class:`TokenStep` (both distributions, the top ``top_n``)."""
    raw = torch.log_softmax(logits.float(), dim=-1)  # (V,)
    sampled = torch.log_softmax(sampling_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, prev_ids,
                                                cfg.repetition_penalty), dim=-1)  # (V,)
    top = torch.topk(raw, min(top_n, raw.numel()))
    ids = top.indices.tolist()
    return TokenStep(token_id, token_bytes(tokenizer, token_id), float(raw[token_id]), float(sampled[token_id]),
                     ids, [token_bytes(tokenizer, i) for i in ids], top.values.tolist(), sampled[ids].tolist())


def _view(prompt_ids: list[int], cfg: GenerationConfig) -> TokenView:
    return TokenView(list(prompt_ids), [], cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)


class TokenRecorder:
    """A ``stream_generate(observe=...)`` observer that records a :class:`TokenStep` per generated token.

    Costs two softmaxes and a top-k over the vocabulary per token; generation without a recorder pays nothing.
    """

    def __init__(self, tokenizer, cfg: GenerationConfig, top_n: int = TOP_N) -> None:  # noqa: ANN001
        self.tokenizer, self.cfg, self.top_n = tokenizer, cfg, top_n
        self.steps: list[TokenStep] = []

    def __call__(self, logits: torch.Tensor, prev_ids: torch.Tensor | None, token: torch.Tensor) -> None:
        self.steps.append(_score_step(self.tokenizer, logits, prev_ids, int(token), self.cfg, self.top_n))

    def view(self, prompt_ids: list[int], token_ids: list[int]) -> TokenView:
        """The recorded steps of ``token_ids`` (a stream's kept ids: the EOS step and a cut stop string left out)."""
        steps = self.steps[:len(token_ids)]
        if [s.token_id for s in steps] != list(token_ids):
            raise ValueError("the recorded tokens are not the stream's tokens: use one recorder per generation")
        out = _view(prompt_ids, self.cfg)
        out.steps = steps
        return out


def _logits_rows(model, ids: list[int], last_only: bool) -> torch.Tensor:  # noqa: ANN001
    """One teacher-forced forward pass: logits (T, V) for every position, or (1, V) for the last one."""
    from llm_core.generation.generate import _supports_last_only

    block = int(model.config.block_size)
    if len(ids) > block:
        raise ValueError(f"{len(ids)} tokens do not fit this model's context of {block} tokens")
    device = next(model.parameters()).device
    kw = {"last_only": True} if last_only and _supports_last_only(model) else {}
    with torch.inference_mode():
        out = model(torch.tensor([ids], dtype=torch.long, device=device), **kw)[0][0]  # (T, V)
    return out[-1:] if last_only else out


def score_tokens(model, tokenizer, prompt_ids: list[int], token_ids: list[int],  # noqa: ANN001
                 cfg: GenerationConfig | None = None, top_n: int = TOP_N) -> TokenView:
    """The token view of ``token_ids`` following ``prompt_ids``, from one teacher-forced forward pass (the same
    numbers :class:`TokenRecorder` records while generating them under ``cfg``)."""
    cfg = cfg or GenerationConfig()
    if not prompt_ids:
        raise ValueError("score_tokens needs a prompt of at least one token")
    view = _view(prompt_ids, cfg)
    if not token_ids:
        return view
    ids = list(prompt_ids) + list(token_ids)
    rows = _logits_rows(model, ids[:-1], last_only=False)  # (n + m - 1, V)
    n = len(prompt_ids)
    full = torch.tensor(ids, dtype=torch.long)
    penalize = cfg.repetition_penalty != 1.0
    with torch.inference_mode():
        for j, tok in enumerate(token_ids):
            prev = full[:n + j] if penalize else None
            view.steps.append(_score_step(tokenizer, rows[n - 1 + j], prev, tok, cfg, top_n))
    return view


def token_logits(model, view: TokenView, i: int) -> torch.Tensor:  # noqa: ANN001
    """The model's full next-token logits (V,) at step ``i`` of ``view`` (one forward pass over what it had seen):
    what :func:`reshape` reshapes when a person tries other knobs on that token."""
    if not 0 <= i < len(view.steps):
        raise ValueError(f"step {i} is not in this reply of {len(view.steps)} tokens")
    return _logits_rows(model, view.prev_ids(i), last_only=True)[0].float()


@dataclass
class Reshaped:
    """One step's distribution before and after the knobs, for the ``ids`` shown (the raw top ones)."""

    ids: list[int]
    raw_probs: list[float]  # the model's own distribution
    probs: list[float]  # after repetition penalty, temperature, top-k and top-p (what sampling would draw from)
    vocab: int  # tokens in the vocabulary
    kept_after_top_k: int  # tokens with a non-zero probability after top-k
    kept: int  # ... after top-p too: the tokens sampling could pick
    kept_raw_mass: float  # the model's own probability of those kept tokens


def reshape(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
            prev_ids: list[int] | None = None, repetition_penalty: float = 1.0, top_n: int = 10) -> Reshaped:
    """What temperature / top-k / top-p do to one step's full logits (V,), with ``llm_core.generation.sampling``'s own code.

    The ``top_n`` most likely tokens under the raw distribution are reported, so bars stay in place while the
    knobs move. Bad settings raise ``ValueError`` with the sampler's words.
    """
    cfg = GenerationConfig(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    cfg.validate()
    prev = torch.tensor(prev_ids, dtype=torch.long) if prev_ids else None
    with torch.inference_mode():
        raw = torch.softmax(logits.float(), dim=-1)  # (V,)
        after_k = sampling_logits(logits, temperature, top_k, 1.0, prev, repetition_penalty)
        final = sampling_logits(logits, temperature, top_k, top_p, prev, repetition_penalty)
        probs = torch.softmax(final, dim=-1)
        kept = torch.isfinite(final)
        top = torch.topk(raw, min(top_n, raw.numel()))
        ids = top.indices.tolist()
        return Reshaped(ids, top.values.tolist(), probs[ids].tolist(), raw.numel(),
                        int(torch.isfinite(after_k).sum()), int(kept.sum()), float(raw[kept].sum()))
