"""Dynamic batching: concurrent generations share one decode forward per step.

On a CPU, decoding one token is bound by reading the weights from memory, so one pass over them for B rows costs
little more than for one. :class:`BatchScheduler` runs one decode loop per model in a thread: each new request is
prefilled on its own (the model's own forward with a :class:`~llm_core.attention.KVCache`), its keys/values are
copied into a row of a :class:`BatchKVCache`, and from then on every step runs ONE forward over a (B, 1) batch of
the active rows' next tokens, each at its own position (per-row RoPE / learned positions, a per-row cache length
and a key mask). Rows sample with their own settings (``llm_core.sampling.sample``, as ``stream_generate`` does),
and leave when they finish or their client goes away.

The batched forward reuses every module of the model (norms, q/k/v projections, MLP, lm_head) through the same
calls :meth:`GPT.forward` makes; only the positions and the attention mask are per row. Nothing in the model is
changed, so the single-request path stays exactly as it was.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llm_core.attention import apply_rope
from llm_core.fastpath import linear
from llm_core.generate import GenerationStats, Observer, _check, _TextAssembler, eos_token_ids, sampling_generator
from llm_core.generation_config import GenerationConfig
from llm_core.sampling import sample

__all__ = ["BatchKVCache", "BatchScheduler", "BatchedStream", "batched_decode_step", "scheduler_for"]


class BatchKVCache:
    """Keys/values of the active rows: (B, nkv, cap, hs) per layer, row b filled up to ``lens[b]``.

    Rows are kept packed at the front (a finished row is replaced by the last one), so a step works on
    ``[:n]``. Slots and positions both double when more are needed."""

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, device: torch.device,
                 dtype: torch.dtype, slots: int = 4, cap: int = 256) -> None:
        shape = (slots, n_kv_head, cap, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.lens = torch.zeros(slots, dtype=torch.long, device=device)  # (slots,)
        self.n = 0  # active rows

    @property
    def slots(self) -> int:
        return self.k[0].size(0)

    @property
    def capacity(self) -> int:
        return self.k[0].size(2)

    def _grow(self, slots: int, cap: int) -> None:
        for buf in (self.k, self.v):
            for i, old in enumerate(buf):
                new = old.new_zeros(slots, old.size(1), cap, old.size(3))
                new[:old.size(0), :, :old.size(2)] = old
                buf[i] = new
        lens = self.lens.new_zeros(slots)
        lens[:self.lens.numel()] = self.lens
        self.lens = lens

    def ensure(self, rows: int, length: int) -> None:
        """Room for ``rows`` rows of ``length`` positions each."""
        slots, cap = self.slots, self.capacity
        if rows > slots or length > cap:
            self._grow(max(rows, slots * 2 if rows > slots else slots),
                       max(length, cap * 2 if length > cap else cap))

    def add(self, k: list[torch.Tensor], v: list[torch.Tensor], length: int) -> int:
        """Append a row from a single-sequence cache's (1, nkv, >=length, hs) tensors; returns its index."""
        self.ensure(self.n + 1, length + 1)
        b = self.n
        for layer in range(len(self.k)):
            self.k[layer][b, :, :length] = k[layer][0, :, :length]
            self.v[layer][b, :, :length] = v[layer][0, :, :length]
        self.lens[b] = length
        self.n += 1
        return b

    def remove(self, b: int) -> None:
        """Drop row ``b``: the last row moves into its place (callers re-index their rows the same way)."""
        last = self.n - 1
        if b != last:
            L = int(self.lens[last])
            for buf in (self.k, self.v):
                for t in buf:
                    t[b, :, :L] = t[last, :, :L]
            self.lens[b] = self.lens[last]
        self.n -= 1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new k/v (n, nkv, 1, hs) per row at its own length; return keys/values (n, nkv, S, hs)."""
        n = self.n
        rows = torch.arange(n, device=k.device)
        pos = self.lens[:n]
        self.k[layer][rows, :, pos] = k[:, :, 0]  # (n, nkv, hs) at (row, :, pos[row])
        self.v[layer][rows, :, pos] = v[:, :, 0]
        S = int(pos.max()) + 1
        return self.k[layer][:n, :, :S], self.v[layer][:n, :, :S]


def _proj(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A projection over the batch's rows. ``fastpath.linear`` upcasts bf16/fp16 weights to fp32 for many-row
    inputs (right for a long prefill), which for a handful of decode rows costs ~3x a pass over the bf16 weights;
    here the half-precision matmul runs as it does for one row, so B rows cost about what one does."""
    if (type(m) is torch.nn.Linear and not m._forward_hooks and not m._forward_pre_hooks
            and m.weight.dtype in (torch.bfloat16, torch.float16)):
        return F.linear(x, m.weight, m.bias)
    return linear(m, x)


def _qkv(attn, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None  # noqa: ANN001
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``CausalSelfAttention._qkv`` (inference branch) with :func:`_proj`: x (n, 1, C) -> q (n, nh, 1, hs),
    k and v (n, nkv, 1, hs); ``rope`` holds per-row (n, 1, 1, hs) tables."""
    B, T, _ = x.shape
    q = _proj(attn.q_proj, x).view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)  # (n, nh, 1, hs)
    k = _proj(attn.k_proj, x).view(B, T, attn.n_kv_head, attn.head_dim).transpose(1, 2)  # (n, nkv, 1, hs)
    v = _proj(attn.v_proj, x).view(B, T, attn.n_kv_head, attn.head_dim).transpose(1, 2)  # (n, nkv, 1, hs)
    if attn.q_norm is not None and attn.k_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q, k, v


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - llm_core.block.MLP (inference), with _proj
    if mlp.swiglu:
        h = F.silu(_proj(mlp.gate_proj, x)) * _proj(mlp.up_proj, x)  # (n, 1, hidden)
    else:
        h = F.gelu(_proj(mlp.up_proj, x), approximate=mlp.gelu_approximate)
    return _proj(mlp.down_proj, h)  # (n, 1, C)


@torch.inference_mode()
def batched_decode_step(model, tokens: torch.Tensor, cache: BatchKVCache) -> torch.Tensor:  # noqa: ANN001
    """One token per active row: tokens (n,) at positions ``cache.lens[:n]`` -> next-token logits (n, V).

    The same modules as :meth:`GPT.forward`, with each row at its own position: RoPE / learned position rows are
    gathered per row, and row b's query sees keys 0..lens[b] only."""
    n = cache.n
    pos = cache.lens[:n].clone()  # (n,)
    cache.ensure(n, int(pos.max()) + 1)
    x = model.tok_emb(tokens.view(n, 1))  # (n, 1, C)
    if model.pos_emb is not None:
        x = x + model.pos_emb(pos).unsqueeze(1)  # (n, 1, C)
    rope = None
    if model.rope is not None:
        cos = model.rope.cos[pos].to(x.dtype)[:, None, None, :]  # (n, 1, 1, hs): broadcasts over heads
        sin = model.rope.sin[pos].to(x.dtype)[:, None, None, :]
        rope = (cos, sin)
    S = int(pos.max()) + 1
    mask = (torch.arange(S, device=x.device)[None, :] <= pos[:, None])[:, None, None, :]  # (n, 1, 1, S)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        q, k, v = _qkv(attn, block.attn_norm(x), rope)  # q (n, nh, 1, hs), k/v (n, nkv, 1, hs)
        k, v = cache.update(i, k, v)  # (n, nkv, S, hs)
        nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_dim
        # query heads sharing a kv head on the time axis, as the single-row path does: (n, nkv, n_rep, hs)
        y = F.scaled_dot_product_attention(q.reshape(n, nkv, nh // nkv, hs), k, v, attn_mask=mask)
        x = x + _proj(attn.o_proj, y.reshape(n, 1, nh * hs))  # (n, 1, C)
        x = x + _mlp(block.mlp, block.mlp_norm(x))
    cache.lens[:n] += 1
    x = model.norm_f(x)
    return _proj(model.lm_head, x)[:, -1]  # (n, V)


# ---------------------------------------------------------------------------------------------------------------
# Streams and the scheduler
# ---------------------------------------------------------------------------------------------------------------


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
    picked: int = 0  # tokens sampled so far
    nxt: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))


class BatchedStream:
    """Text pieces of one request served by a :class:`BatchScheduler`; the same surface as
    ``llm_core.generate.TextStream`` (iterate for pieces; ``.stats`` and ``.token_ids`` fill in as it runs)."""

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
    def model(self):  # noqa: ANN201 - llm_core.model.GPT
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this scheduler was unloaded")
        return model

    # -- the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        model = self.model  # held while the loop runs
        rows: list[tuple[_Row, Observer | None]] = []
        cache: BatchKVCache | None = None
        try:
            while True:
                while True:  # admit everything waiting: prefill alone, then join the batch
                    try:
                        stream, prompt, cfg, observe = self._pending.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        row, k, v = self._prefill(stream, prompt, cfg, observe)
                    except Exception as e:  # noqa: BLE001 - handed to that stream's reader
                        stream._q.put(e)
                        stream._q.put(None)
                        continue
                    if row is None:
                        continue
                    if cache is None:
                        p, c = model.norm_f.weight, model.config
                        cache = BatchKVCache(c.n_layer, c.n_kv_head, c.head_dim, p.device, k[0].dtype)
                    cache.add(k, v, len(prompt))
                    rows.append((row, observe))
                    if self._emit(row):  # the first token may already end it
                        self._drop(rows, cache, len(rows) - 1)
                with self._lock:
                    if not rows and self._pending.empty():
                        self._thread = None
                        return
                if not rows:
                    continue
                assert cache is not None
                for b in range(len(rows) - 1, -1, -1):  # clients that left
                    if rows[b][0].stream.stop_event.is_set():
                        rows[b][0].stream.stats.stop_reason = "stopped"
                        self._finish(rows[b][0])
                        self._drop(rows, cache, b)
                if not rows:
                    continue
                tokens = torch.stack([r.nxt for r, _ in rows])  # (n,)
                logits = batched_decode_step(model, tokens, cache)  # (n, V)
                self.steps += 1
                self.max_batch = max(self.max_batch, len(rows))
                with torch.inference_mode():
                    for b, (row, observe) in enumerate(rows):
                        self._pick(row, logits[b], observe)
                for b in range(len(rows) - 1, -1, -1):
                    if self._emit(rows[b][0]):
                        self._drop(rows, cache, b)
        except BaseException as e:  # noqa: BLE001 - every waiting reader gets the error, none hangs
            for row, _ in rows:
                row.stream._q.put(e)
                row.stream._q.put(None)
            with self._lock:
                self._thread = None
            raise

    def _prefill(self, stream: BatchedStream, prompt: list[int], cfg: GenerationConfig,
                 observe: Observer | None) -> tuple[_Row | None, list, list]:
        model = self.model
        ctx = int(model.config.block_size)
        n = len(prompt)
        max_new = min(cfg.max_new_tokens, ctx - n)
        st = stream.stats
        st.prompt_tokens = n
        t0 = time.perf_counter()
        if max_new == 0:
            st.stop_reason = "max_new_tokens" if cfg.max_new_tokens == 0 else "context"
            stream._q.put(None)
            return None, [], []
        device = model.norm_f.weight.device
        gen = sampling_generator(cfg, device)
        eos = (set(cfg.eos_token_ids) if cfg.eos_token_ids is not None else eos_token_ids(self.tokenizer, model)
               ) if cfg.stop_on_eos else set()
        with torch.inference_mode():
            history = torch.empty(n + max_new, dtype=torch.long, device=device)
            history[:n] = torch.tensor(prompt, dtype=torch.long)
            kv = model.new_cache(1, max_len=n + 1)
            logits = model(history[:n].view(1, n), cache=kv, last_only=True)[0][:, -1]  # (1, V)
            row = _Row(stream, cfg, prompt, max_new, gen, history, eos, _TextAssembler(self.tokenizer, cfg.stop), t0)
            self._pick(row, logits[0], observe)
        return row, kv.k, kv.v

    def _pick(self, row: _Row, logits: torch.Tensor, observe: Observer | None) -> None:
        cfg, n = row.cfg, len(row.prompt)
        prev = row.history[:n + row.picked] if cfg.repetition_penalty != 1.0 else None
        nxt = sample(logits, cfg.temperature, cfg.top_k, cfg.top_p, row.gen, prev, cfg.repetition_penalty)
        if observe is not None:
            observe(logits, prev, nxt)
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
    def _drop(rows: list, cache: BatchKVCache, b: int) -> None:
        cache.remove(b)
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
