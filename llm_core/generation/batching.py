"""Dynamic batching: concurrent generations share one decode forward per step.

On a CPU, decoding one token is bound by reading the weights from memory, so one pass over them for B rows costs
little more than for one. :class:`BatchScheduler` runs one decode loop per model in a thread. This file holds only
the scheduling; every number is computed by the model's own forward (``GPT.forward``) through a per-row
:class:`~llm_core.model.kv_cache.KVCache` (``model.new_cache(B, per_row=True)``), whose rows sit at their own
lengths with their own positions and key mask:

- requests that arrive together are prefilled together: one forward over their prompts, left-padded to the longest;
  their cache rows then join the running batch (:meth:`KVCache.add_rows`);
- every step runs ONE forward over a (B, 1) batch of the active rows' next tokens;
- rows sample with their own settings (``llm_core.generation.sampling.sample``, as ``stream_generate`` does), and
  leave (:meth:`KVCache.remove_row`) when they finish or their client goes away.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from llm_core.generation.generate import (
    GenerationStats,
    Observer,
    _check,
    _TextAssembler,
    eos_token_ids,
    sampling_generator,
)
from llm_core.generation.generation_config import GenerationConfig
from llm_core.generation.sampling import sample

__all__ = ["BatchScheduler", "BatchedStream", "prefill_rows", "scheduler_for"]


@dataclass
class _Row:
    stream: BatchedStream
    cfg: GenerationConfig
    prompt: list[int]
    max_new: int
    gen: torch.Generator | None
    history: torch.Tensor  # (n_prompt + max_new,) prompt and picked ids, for the repetition penalty
    eos: set[int]
    text: _TextAssembler
    t0: float
    observe: Observer | None = None
    picked: int = 0  # tokens sampled so far
    nxt: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))


class BatchedStream:
    """Text pieces of one request served by a :class:`BatchScheduler`; the same surface as
    ``llm_core.generation.generate.TextStream`` (iterate for pieces; ``.stats`` and ``.token_ids`` fill in as it runs)."""

    def __init__(self, stop_event: threading.Event | None, stats: GenerationStats | None) -> None:
        self.stats = stats if stats is not None else GenerationStats()
        self.token_ids: list[int] = []
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self._q: queue.Queue = queue.Queue()

    def __iter__(self) -> Iterator[str]:
        try:
            while (item := self._q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop_event.set()  # a consumer that stops reading ends the row

    def text(self) -> str:
        return "".join(self)


@torch.inference_mode()
def prefill_rows(model, prompts: list[list[int]]) -> tuple[torch.Tensor, object]:  # noqa: ANN001
    """Prompts of different lengths in ONE forward: left-padded to the longest (the cache places each row's padding
    after its real tokens, masked and later overwritten). Returns next-token logits (B, V) and the per-row cache."""
    T = max(len(p) for p in prompts)
    device = model.norm_f.weight.device
    idx = torch.zeros(len(prompts), T, dtype=torch.long, device=device)  # (B, T); pad id 0 is never attended to
    for b, p in enumerate(prompts):
        idx[b, T - len(p):] = torch.tensor(p, dtype=torch.long)
    cache = model.new_cache(len(prompts), max_len=T + 1, per_row=True)
    if any(len(p) != T for p in prompts):
        cache.real = torch.tensor([len(p) for p in prompts], device=device)  # (B,) real tokens per row
    logits = model(idx, cache=cache, last_only=True)[0][:, -1]  # (B, V)
    return logits, cache


class BatchScheduler:
    """One decode loop for one model, shared by every stream submitted to it.

    The loop thread runs while there is work and ends when the last row leaves (no idle thread is left)."""

    def __init__(self, model, tokenizer) -> None:  # noqa: ANN001
        self._model = weakref.ref(model)  # weak: the registry may drop the model; a running loop holds it
        self.tokenizer = tokenizer
        self._pending: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.steps = 0  # batched decode forwards run (for tests and benchmarks)
        self.max_batch = 0  # most rows decoded in one forward
        self.prefills = 0  # prefill forwards run (requests arriving together share one)

    def submit(self, prompt_ids: list[int], cfg: GenerationConfig | None = None,
               stop_event: threading.Event | None = None, stats: GenerationStats | None = None,
               observe: Observer | None = None) -> BatchedStream:
        """Queue a generation; returns its stream at once (bad input raises here, as ``stream_generate`` does)."""
        cfg = cfg or GenerationConfig()
        _check(self.model, prompt_ids, cfg)
        if not cfg.use_cache:
            raise ValueError("batched generation needs use_cache=True")
        stream = BatchedStream(stop_event, stats)
        self._pending.put((stream, list(prompt_ids), cfg, observe))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="batch-decode", daemon=True)
                self._thread.start()
        return stream

    @property
    def model(self):  # noqa: ANN201 - llm_core.model.gpt.GPT
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this scheduler was unloaded")
        return model

    # -- the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        model = self.model  # held while the loop runs
        rows: list[_Row] = []
        cache = model.new_cache(0, per_row=True)  # the running rows; grows as rows join
        try:
            while True:
                self._admit(rows, cache)
                with self._lock:
                    if not rows and self._pending.empty():
                        self._thread = None
                        return
                for b in range(len(rows) - 1, -1, -1):  # clients that left
                    if rows[b].stream.stop_event.is_set():
                        rows[b].stream.stats.stop_reason = "stopped"
                        self._finish(rows[b])
                        self._drop(rows, cache, b)
                if rows:
                    self._step(model, rows, cache)
        except BaseException as e:  # noqa: BLE001 - every waiting reader gets the error, none hangs
            for row in rows:
                row.stream._q.put(e)
                row.stream._q.put(None)
            with self._lock:
                self._thread = None
            raise

    def _step(self, model, rows: list[_Row], cache) -> None:  # noqa: ANN001
        """One forward for every active row (B, 1), each at its own position; sample, emit, drop the finished."""
        tokens = torch.stack([r.nxt for r in rows]).view(len(rows), 1)  # (B, 1)
        with torch.inference_mode():
            logits = model(tokens, cache=cache, last_only=True)[0][:, -1]  # (B, V)
            self.steps += 1
            self.max_batch = max(self.max_batch, len(rows))
            for b, row in enumerate(rows):
                self._pick(row, logits[b])
        for b in range(len(rows) - 1, -1, -1):
            if self._emit(rows[b]):
                self._drop(rows, cache, b)

    def _admit(self, rows: list[_Row], cache) -> None:  # noqa: ANN001
        """Everything waiting joins: prefilled together in one forward, then appended to the batch's cache."""
        new: list[_Row] = []
        while True:
            try:
                stream, prompt, cfg, observe = self._pending.get_nowait()
            except queue.Empty:
                break
            row = self._new_row(stream, prompt, cfg, observe)
            if row is not None:
                new.append(row)
        if not new:
            return
        try:
            logits, kv = prefill_rows(self.model, [r.prompt for r in new])  # (G, V)
        except Exception as e:  # noqa: BLE001 - handed to those streams' readers
            for r in new:
                r.stream._q.put(e)
                r.stream._q.put(None)
            return
        self.prefills += 1
        with torch.inference_mode():
            for b, r in enumerate(new):
                self._pick(r, logits[b])
        cache.add_rows(kv)
        rows.extend(new)
        for b in range(len(rows) - 1, len(rows) - len(new) - 1, -1):  # the first token may already end a row
            if self._emit(rows[b]):
                self._drop(rows, cache, b)

    def _new_row(self, stream: BatchedStream, prompt: list[int], cfg: GenerationConfig,
                 observe: Observer | None) -> _Row | None:
        """The row of a new request (None when it has nothing to generate: its stream is closed here)."""
        model = self.model
        n = len(prompt)
        max_new = min(cfg.max_new_tokens, int(model.config.block_size) - n)
        st = stream.stats
        st.prompt_tokens = n
        if max_new == 0:
            st.stop_reason = "max_new_tokens" if cfg.max_new_tokens == 0 else "context"
            stream._q.put(None)
            return None
        device = model.norm_f.weight.device
        eos = (set(cfg.eos_token_ids) if cfg.eos_token_ids is not None else eos_token_ids(self.tokenizer, model)
               ) if cfg.stop_on_eos else set()
        history = torch.empty(n + max_new, dtype=torch.long, device=device)
        history[:n] = torch.tensor(prompt, dtype=torch.long)
        return _Row(stream, cfg, prompt, max_new, sampling_generator(cfg, device), history, eos,
                    _TextAssembler(self.tokenizer, cfg.stop), time.perf_counter(), observe)

    @staticmethod
    def _pick(row: _Row, logits: torch.Tensor) -> None:
        cfg, n = row.cfg, len(row.prompt)
        prev = row.history[:n + row.picked] if cfg.repetition_penalty != 1.0 else None
        nxt = sample(logits, cfg.temperature, cfg.top_k, cfg.top_p, row.gen, prev, cfg.repetition_penalty)
        if row.observe is not None:
            row.observe(logits, prev, nxt)
        row.history[n + row.picked] = nxt
        row.picked += 1
        row.nxt = nxt

    def _emit(self, row: _Row) -> bool:
        """Hand the row's newest token to its reader; True when the row is finished."""
        st, s = row.stream.stats, row.stream
        now = time.perf_counter()
        if row.picked == 1:
            st.ttft_s = now - row.t0
        st.total_s = now - row.t0
        tok = int(row.nxt)
        if tok in row.eos:
            st.stop_reason = "eos"
            return self._finish(row)
        st.new_tokens += 1
        s.token_ids.append(tok)
        piece = row.text.push(tok)
        if piece:
            s._q.put(piece)
        if row.text.stopped:
            st.stop_reason = "stop_string"
            return self._finish(row)
        if s.stop_event.is_set():
            st.stop_reason = "stopped"
            return self._finish(row)
        if row.picked >= row.max_new:
            st.stop_reason = "max_new_tokens" if row.max_new == row.cfg.max_new_tokens else "context"
            return self._finish(row)
        return False

    @staticmethod
    def _finish(row: _Row) -> bool:
        tail = row.text.finish()
        if tail:
            row.stream._q.put(tail)
        row.stream.stats.total_s = time.perf_counter() - row.t0
        row.stream._q.put(None)
        return True

    @staticmethod
    def _drop(rows: list[_Row], cache, b: int) -> None:  # noqa: ANN001
        cache.remove_row(b)  # the cache's last row moves into b, as the list's does
        rows[b] = rows[-1]
        rows.pop()


_SCHEDULERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its scheduler (weak both ways)
_SCHEDULERS_LOCK = threading.Lock()


def scheduler_for(model, tokenizer) -> BatchScheduler:  # noqa: ANN001
    """The one scheduler of ``model`` (created on first use; it goes when the model is dropped)."""
    with _SCHEDULERS_LOCK:
        s = _SCHEDULERS.get(model)
        if s is None or s.tokenizer is not tokenizer:
            s = _SCHEDULERS[model] = BatchScheduler(model, tokenizer)
        return s
