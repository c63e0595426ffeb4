"""Text generation: a KV-cached decode loop, and a streaming iterator that yields UTF-8-safe text pieces.

``generate`` returns new token ids; ``stream_generate`` yields text as it is produced and fills a
:class:`GenerationStats` (tokens, tokens/s, time to first token) the UI shows under each reply.

Speed: the loop runs under ``torch.inference_mode``, prefills the prompt in one forward, then feeds one token at a
time through a cache sized to exactly what this call needs. Prefill and decoding run the model's own forward
(the same blocks training runs); :mod:`llm_core.model.fastpath` picks the matmul kernel for each case.
"""

from __future__ import annotations

import codecs
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from llm_core.generation.generation_config import GenerationConfig
from llm_core.generation.sampling import sample

__all__ = ["GenerationConfig", "GenerationStats", "TextStream", "generate", "stream_generate", "eos_token_ids",
           "kept_ids", "Observer"]


@dataclass
class GenerationStats:
    """Filled in while generating; read it after (or during) the stream."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # prompt processing + first new token
    total_s: float = 0.0
    stop_reason: str = ""  # "eos" | "stop_string" | "max_new_tokens" | "context" | "stopped"

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second after the first one (the steady decode speed)."""
        dt = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / dt if self.new_tokens > 1 and dt > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second over the whole call, prompt processing included."""
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.new_tokens} tokens · {self.decode_tok_s:.1f} tok/s · "
                f"first token {self.ttft_s:.2f} s")


def eos_token_ids(tokenizer, model=None) -> set[int]:  # noqa: ANN001 - duck-typed Tokenizer / GPT
    """Ids that end a reply: the tokenizer's EOS plus end-of-turn/end-of-text specials it knows."""
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.add(int(eos))
    specials = getattr(tokenizer, "special_tokens", None) or {}
    for name in ("<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<end_of_turn>"):  # last: Gemma
        if name in specials:
            ids.add(int(specials[name]))
    if not ids and model is not None:
        mid = getattr(getattr(model, "config", None), "eos_token_id", None)
        if mid is not None:
            ids.add(int(mid))
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Incremental text: UTF-8 safe, stop strings held back until they can no longer match
# ---------------------------------------------------------------------------------------------------------------


class _TextAssembler:
    """Turns token ids into text pieces. Bytes of a character split between tokens are held back until complete
    (an incremental UTF-8 decoder with errors="replace", so the joined pieces equal ``tokenizer.decode(ids)``);
    text that could be the start of a stop string is held back until it either completes (-> stop, dropped) or
    diverges (-> emitted)."""

    def __init__(self, tokenizer, stop: list[str]) -> None:  # noqa: ANN001
        piece = getattr(tokenizer, "id_to_piece", None) or (lambda i: tokenizer.decode_bytes([i]))
        n = getattr(tokenizer, "vocab_size", None)
        # ids past the tokenizer (Qwen pads its embedding: 151,936 rows for 151,665 tokens) decode to nothing, as in HF
        self._piece = piece if not isinstance(n, int) else (lambda i: piece(i) if i < n else b"")
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        return self._feed(self._dec.decode(self._piece(token_id)))

    def finish(self) -> str:
        """Flush at the end: incomplete bytes become U+FFFD, held-back text that never became a stop string."""
        if self.stopped:
            return ""
        out = self._feed(self._dec.decode(b"", final=True))
        if not self.stopped:
            out, self._pending = out + self._pending, ""
        return out

    def _feed(self, text: str) -> str:
        if self.stopped or not text:
            return ""
        if not self._stop:
            return text
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped, self._pending = True, ""
            return buf[:min(hits)]
        keep = 0  # longest suffix of buf that is a proper prefix of some stop string
        for s in self._stop:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self._pending = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]


# ---------------------------------------------------------------------------------------------------------------
# The token loop
# ---------------------------------------------------------------------------------------------------------------

StepFn = Callable[[torch.Tensor], torch.Tensor]  # idx (1, T) -> logits of the last position (1, V)
# called after each pick with (raw logits (V,), the ids the repetition penalty saw or None, the picked id ()):
# how llm_core.labs.token_view records what the model considered without a second forward pass
Observer = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], None]


def _supports_last_only(model) -> bool:  # noqa: ANN001
    try:
        return "last_only" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def sampling_generator(cfg: GenerationConfig, device: torch.device) -> torch.Generator | None:
    """The random stream one request samples from: seeded when ``cfg.seed`` is set (the same reply again), fresh
    otherwise; None for greedy decoding, which draws nothing."""
    if cfg.temperature <= 0:
        return None
    gen = torch.Generator(device=device)
    if cfg.seed is not None:
        gen.manual_seed(cfg.seed)
    else:
        gen.seed()
    return gen


def _make_step(model, n_prompt: int, max_new: int, cfg: GenerationConfig) -> StepFn:  # noqa: ANN001
    """A function that feeds new tokens and returns next-token logits, with or without a KV cache."""
    kw = {"last_only": True} if _supports_last_only(model) else {}
    if cfg.use_cache:
        cache = model.new_cache(1, max_len=n_prompt + max_new)

        def step(idx: torch.Tensor) -> torch.Tensor:
            return model(idx, cache=cache, **kw)[0][:, -1]  # (1, V)
        return step

    seq: list[torch.Tensor] = []

    def step_nocache(idx: torch.Tensor) -> torch.Tensor:
        seq.append(idx)
        return model(torch.cat(seq, dim=1), **kw)[0][:, -1]  # recompute the whole sequence: (1, V)
    return step_nocache


def _check(model, prompt_ids: list[int], cfg: GenerationConfig) -> None:  # noqa: ANN001
    cfg.validate()
    if not prompt_ids:
        raise ValueError("the prompt is empty: generation needs at least one token to condition on")
    ctx = int(model.config.block_size)
    if len(prompt_ids) >= ctx:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens but the model's context is {ctx}: shorten it "
                         f"(chat history is truncated by llm_core.generation.chat.build_chat_prompt)")


def _tokens(model, prompt_ids: list[int], cfg: GenerationConfig, stats: GenerationStats,  # noqa: ANN001
            observe: Observer | None = None) -> Iterator[int]:
    """Yield new token ids one by one; the next forward runs only when the consumer asks for the next token,
    so stopping early (EOS, stop string, stop button) wastes no compute."""
    _check(model, prompt_ids, cfg)
    ctx = int(model.config.block_size)
    n = len(prompt_ids)
    max_new = min(cfg.max_new_tokens, ctx - n)
    stats.prompt_tokens = n
    if max_new == 0:
        stats.stop_reason = "max_new_tokens" if cfg.max_new_tokens == 0 else "context"
        return
    device = next(model.parameters()).device
    gen = sampling_generator(cfg, device)
    penalize = cfg.repetition_penalty != 1.0
    # inference_mode only around the compute, never across a yield (it would leak into the consumer's code)
    with torch.inference_mode():
        history = torch.empty(n + max_new, dtype=torch.long, device=device)  # prompt + generated, for the penalty
        history[:n] = torch.tensor(prompt_ids, dtype=torch.long)
        step = _make_step(model, n, max_new, cfg)
        logits = step(history[:n].view(1, n))  # prefill: (1, V)
        prev = history[:n] if penalize else None
        nxt = sample(logits[0], cfg.temperature, cfg.top_k, cfg.top_p, gen, prev, cfg.repetition_penalty)  # ()
        if observe is not None:
            observe(logits[0], prev, nxt)
        history[n] = nxt
    for i in range(1, max_new + 1):
        yield int(nxt)
        if i == max_new:
            break
        with torch.inference_mode():
            logits = step(nxt.view(1, 1))  # (1, V)
            prev = history[:n + i] if penalize else None
            nxt = sample(logits[0], cfg.temperature, cfg.top_k, cfg.top_p, gen, prev, cfg.repetition_penalty)
            if observe is not None:
                observe(logits[0], prev, nxt)
            history[n + i] = nxt
    stats.stop_reason = "max_new_tokens" if max_new == cfg.max_new_tokens else "context"


class TextStream:
    """Iterator of text pieces from :func:`stream_generate`; ``.stats`` and ``.token_ids`` fill in as it runs."""

    def __init__(self, model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig,  # noqa: ANN001
                 stop_event: threading.Event | None, stats: GenerationStats | None,
                 observe: Observer | None = None) -> None:
        _check(model, prompt_ids, cfg)  # bad input fails here, not at the first next()
        self.stats = stats if stats is not None else GenerationStats()
        self.token_ids: list[int] = []
        self._observe = observe
        self._it = self._run(model, tokenizer, list(prompt_ids), cfg, stop_event)

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def text(self) -> str:
        """Consume the rest of the stream and return all of its text."""
        return "".join(self)

    def _run(self, model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig,  # noqa: ANN001
             stop_event: threading.Event | None) -> Iterator[str]:
        st = self.stats
        eos = (set(cfg.eos_token_ids) if cfg.eos_token_ids is not None else eos_token_ids(tokenizer, model)
               ) if cfg.stop_on_eos else set()
        text = _TextAssembler(tokenizer, cfg.stop)
        t0 = time.perf_counter()
        tokens = _tokens(model, prompt_ids, cfg, st, self._observe)
        first = True
        try:
            for tok in tokens:
                now = time.perf_counter()
                if first:
                    st.ttft_s, first = now - t0, False
                st.total_s = now - t0
                if tok in eos:
                    st.stop_reason = "eos"
                    break
                st.new_tokens += 1
                self.token_ids.append(tok)
                piece = text.push(tok)
                if text.stopped:
                    st.stop_reason = "stop_string"
                if piece:
                    yield piece
                if text.stopped:
                    break
                if stop_event is not None and stop_event.is_set():
                    st.stop_reason = "stopped"
                    break
        finally:
            tokens.close()
            st.total_s = time.perf_counter() - t0
        tail = text.finish()
        if tail:
            yield tail


def stream_generate(model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig | None = None,  # noqa: ANN001
                    stop_event: threading.Event | None = None, stats: GenerationStats | None = None,
                    observe: Observer | None = None) -> TextStream:
    """Yield the completion of ``prompt_ids`` as text pieces (never a broken UTF-8 character, never any part of a
    stop string). Setting ``stop_event`` ends the stream after the current token. ``stats`` (or the returned
    stream's ``.stats``) holds tokens, tokens/s and time to first token. ``observe`` sees each step's logits
    (see :data:`Observer`; ``llm_core.labs.token_view.TokenRecorder`` is one)."""
    return TextStream(model, tokenizer, prompt_ids, cfg or GenerationConfig(), stop_event, stats, observe)


def generate(model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig | None = None,  # noqa: ANN001
             stats: GenerationStats | None = None) -> list[int]:
    """New token ids for ``prompt_ids``. EOS is not included. With a stop string, the ids are cut so their text
    ends before the stop string (a token straddling its start is dropped too)."""
    stream = stream_generate(model, tokenizer, prompt_ids, cfg, stats=stats)
    text = stream.text()
    return kept_ids(tokenizer, stream, text)


def kept_ids(tokenizer, stream: TextStream, text: str) -> list[int]:  # noqa: ANN001
    """The stream's ids whose text is in ``text`` (all of them, unless a stop string cut the text: then the ids
    end before it, a token straddling its start dropped too)."""
    ids = stream.token_ids
    if stream.stats.stop_reason != "stop_string":
        return ids
    limit, total, keep = len(text.encode("utf-8")), 0, 0
    piece = getattr(tokenizer, "id_to_piece", None) or (lambda i: tokenizer.decode_bytes([i]))
    for tok in ids:
        total += len(piece(tok))
        if total > limit:
            break
        keep += 1
    return ids[:keep]
