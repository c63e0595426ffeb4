"""The KV cache: keys/values of every layer kept between forwards, so decoding a token costs O(S), not O(S^2).

One class for every use: a single chat (rows sharing one length, ``pos``), and several requests decoded in one batch
(``per_row=True``: rows at their own lengths, joining and leaving between forwards; ``llm_core.generation
.batching``). :class:`~llm_core.model.attention.CausalSelfAttention` writes into it and reads it back; the model
(``GPT.forward``) asks it for per-row positions and advances it.

Sliding-window layers (Gemma 3) keep only their last ``window`` positions, in a ring buffer (position p in slot
p % window), so a long chat's memory for them stays bounded; see :meth:`KVCache.update`.

Shapes: B rows, nkv key/value heads, T new tokens, S positions attended, hs head size, w window.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys/values for every layer, so decoding one token costs O(S) instead of O(S^2).

    ``pos`` is how many positions are filled; the model advances it by T after each forward. ``max_len`` is the
    limit; memory is held only for what is used: the buffers start at ``min(max_len, initial)`` positions and
    double when a write needs more (a default cache for SmolLM2's 8,192-token context would otherwise take
    377 MB up front; a 262-token chat takes 12 MB).

    Rows at their own lengths (``per_row=True``: several requests decoded in one batch, ``llm_core.generation
    .batching``): ``lens`` (B,) holds each row's filled length and ``pos`` the longest. Before each forward the
    model asks :meth:`positions` for every new token's position (row b's T tokens at lens[b] .. lens[b]+T-1),
    which also builds ``mask``: query t of row b sees keys 0..lens[b]+t, never another row's padding. ``real``
    (B,) says how many of a left-padded forward's T tokens are real per row. Rows join with :meth:`add_rows` and
    leave with :meth:`remove_row` between forwards. A plain cache (``lens`` None) pays nothing for any of this.

    A sliding-window layer (``update(..., window=w)``) holds a ring of w positions instead of a growing buffer
    (``ring_windows``: layer -> w). A per-row cache turns its sliding layers into rings at its first one-token step
    (batched decoding); its multi-token forwards (a left-padded prefill) need the growing buffers.
    """

    initial: int = 256  # positions allocated at first

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 per_row: bool = False) -> None:
        cap = min(max_len, self.initial)
        shape = (batch_size, n_kv_head, cap, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]  # (B, nkv, cap, hs) each
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_len, self.pos = batch_size, max_len, 0
        self.lens = torch.zeros(batch_size, dtype=torch.long, device=device) if per_row else None  # (slots,)
        self.real: torch.Tensor | None = None  # (B,) real (right-aligned) tokens per row of the next forward
        self.mask: torch.Tensor | None = None  # (B, 1, T, S) keys each new token may see (per-row caches only)
        self._window: tuple[int, torch.Tensor] | None = None  # (window, mask) of sliding layers, this forward
        self._cap = cap if self.k else max_len  # positions allocated for the layers that keep every position
        self.ring_windows: dict[int, int] = {}  # sliding layers kept as rings of their window: layer -> w

    @property
    def capacity(self) -> int:
        """Positions allocated now for the layers that keep every position (<= max_len)."""
        return self._cap

    def _grow(self, need: int, slots: int | None = None) -> None:
        """Room for ``need`` positions (doubling) and, for per-row caches, ``slots`` rows."""
        cap = min(self.max_len, max(need, 2 * self.capacity)) if need > self.capacity else self.capacity
        self._cap = cap
        for buf in (self.k, self.v):
            for i, old in enumerate(buf):
                if i in self.ring_windows:  # a ring keeps its w positions; only rows may grow
                    if slots and slots > old.size(0):
                        buf[i] = torch.cat([old, old.new_zeros(slots - old.size(0), *old.shape[1:])])
                    continue
                new = old.new_zeros(slots or old.size(0), old.size(1), cap, old.size(3))  # (slots, nkv, cap, hs)
                new[:old.size(0), :, :old.size(2)] = old  # all of it: other layers may already hold this step's k/v
                buf[i] = new
        if self.lens is not None and slots and slots > self.lens.numel():
            self.lens = torch.cat([self.lens, self.lens.new_zeros(slots - self.lens.numel())])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new k/v (B, nkv, T, hs) at ``pos`` and return all keys/values so far (B, nkv, pos+T, hs).

        ``window``: the layer attends only to its last ``window`` positions (sliding window). Then the layer keeps a
        ring of w positions and returns fewer keys (see :meth:`_update_ring`): for one new token the ring itself,
        for T > 1 the last keys in order, ending at the newest; attention's masks are relative, so both serve."""
        if self.lens is not None:
            return self._update_rows(layer, k, v, window)
        T = k.size(2)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.pos} + {T} tokens > max_len {self.max_len}")
        if window is not None and (layer in self.ring_windows or window < self.max_len):
            return self._update_ring(layer, k, v, window)
        if end > self.capacity:
            self._grow(end)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def _to_ring(self, layer: int, w: int) -> None:
        """Turn ``layer``'s growing buffers into rings of ``w`` slots, keeping the positions a query can still see
        (each row's last w: rows of a per-row cache have their own lengths)."""
        dev = self.k[layer].device
        lens = [self.pos] * self.batch_size if self.lens is None else self.lens[:self.batch_size].tolist()
        for buf in (self.k, self.v):
            old = buf[layer]
            ring = old.new_zeros(old.size(0), old.size(1), w, old.size(3))  # (slots, nkv, w, hs)
            for b, n in enumerate(lens):
                held = torch.arange(max(0, n - w), n, device=dev)  # (<= w,) absolute positions
                ring[b, :, held % w] = old[b, :, held]
            buf[layer] = ring
        self.ring_windows[layer] = w

    def _update_ring(self, layer: int, k: torch.Tensor, v: torch.Tensor, w: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sliding layer: position p lives in slot p % w. One new token (decode): written in its slot; returned is
        the ring (B, nkv, min(pos+1, w), hs), in slot order: one query sees all of it, and attention without a mask
        does not depend on the keys' order. T > 1 new tokens: returned are the w-1 positions before them that a
        query can still see, then the T new ones (B, nkv, <= w-1+T, hs), in order, ending at the newest (attention
        builds its causal window mask for that span); the last w positions go into the ring."""
        if self.ring_windows.get(layer) != w:
            self._to_ring(layer, w)
        ring_k, ring_v = self.k[layer], self.v[layer]  # (B, nkv, w, hs)
        past, T = self.pos, k.size(2)
        if T == 1:
            slot = past % w
            ring_k[:, :, slot:slot + 1] = k
            ring_v[:, :, slot:slot + 1] = v
            n = min(past + 1, w)
            return ring_k[:, :, :n], ring_v[:, :, :n]
        held = min(past, w - 1)
        if held:
            slots = torch.arange(past - held, past, device=k.device) % w  # (held,) oldest first
            k = torch.cat([ring_k[:, :, slots], k], dim=2)  # (B, nkv, held+T, hs)
            v = torch.cat([ring_v[:, :, slots], v], dim=2)
        keep = min(w, past + T)
        slots = torch.arange(past + T - keep, past + T, device=k.device) % w  # (keep,) slots of the newest positions
        ring_k[:, :, slots] = k[:, :, -keep:]
        ring_v[:, :, slots] = v[:, :, -keep:]
        return k, v

    def advance(self, T: int) -> None:
        """After a forward of T new tokens: every row is T longer (a left-padded row: by its real tokens)."""
        if self.lens is None:
            self.pos += T
            return
        n = self.batch_size
        self.lens[:n] += T if self.real is None else self.real
        self.pos = int(self.lens[:n].max()) if self.real is not None else self.pos + T
        self.real = self.mask = None

    def reset(self) -> None:
        self.pos = 0
        if self.lens is not None:
            self.lens.zero_()

    def crop(self, pos: int) -> None:
        """Forget everything after ``pos`` (e.g. to reuse a shared prompt prefix)."""
        if not 0 <= pos <= self.pos:
            raise ValueError(f"cannot crop the cache to {pos}: it holds {self.pos} positions")
        if self.lens is not None:
            raise ValueError("crop() is for a cache whose rows share one length; this one is per-row")
        for w in self.ring_windows.values():  # a ring still holds positions pos-w .. pos-1; p needs p-w+1 .. p-1
            if self.pos > w and pos < self.pos - 1:
                raise ValueError(f"cannot crop the cache to {pos}: its sliding-window layers keep only the last {w} "
                                 f"of its {self.pos} positions; prefill again instead")
        self.pos = pos

    # -- rows at their own lengths (per_row=True) ------------------------------------------------------------
    def positions(self, T: int) -> torch.Tensor:
        """The positions (B, T) of the next forward's T new tokens in each row; builds ``mask`` (B, 1, T, S).

        Row b's tokens go to lens[b] .. lens[b]+T-1. A row whose last ``real[b]`` tokens only are real (left
        padding) keeps them at lens[b] .. lens[b]+real[b]-1 and puts its padding after them: later than every
        real query, so masked, and overwritten by the row's next tokens."""
        assert self.lens is not None, "positions() is for per-row caches (per_row=True)"
        n, S = self.batch_size, self.pos + T
        if S > self.max_len:
            raise ValueError(f"KV cache is full: {self.pos} + {T} tokens > max_len {self.max_len}")
        if S > self.capacity:
            self._grow(S)
        t = torch.arange(T, device=self.lens.device)  # (T,)
        pos = self.lens[:n, None] + t  # (B, T)
        if self.real is not None:
            pad = (T - self.real)[:, None]  # (B, 1)
            pos = torch.where(t < pad, pos + self.real[:, None], pos - pad)  # padding after the real tokens
        self._pos, self._window = pos, None
        self.mask = (torch.arange(S, device=pos.device) <= pos[..., None]).unsqueeze(1)  # (B, 1, T, S)
        return pos

    def _update_rows(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row :meth:`update`: k/v (B, nkv, T, hs) written at ``positions``' (B, T); keys (B, nkv, S, hs).
        A sliding layer in a one-token step: written in slot pos % w of its ring; keys (B, nkv, w, hs), with
        :meth:`window_mask` saying which slots each row may see."""
        pos, S = self._pos, self.mask.size(-1)  # type: ignore[union-attr]
        rows = torch.arange(pos.size(0), device=pos.device)[:, None]  # (B, 1)
        if window is not None and (layer in self.ring_windows or (pos.size(1) == 1 and window < self.max_len)):
            if pos.size(1) != 1:
                raise ValueError("a multi-token forward on a batched cache whose sliding layers keep only their "
                                 "window: prefill new rows in a cache of their own and join them with add_rows()")
            if layer not in self.ring_windows:
                self._to_ring(layer, window)
            slot = pos % window  # (B, 1)
            self.k[layer][rows, :, slot] = k.transpose(1, 2)  # (B, 1, nkv, hs) at (row b, :, slot b)
            self.v[layer][rows, :, slot] = v.transpose(1, 2)
            return self.k[layer][:pos.size(0)], self.v[layer][:pos.size(0)]
        self.k[layer][rows, :, pos] = k.transpose(1, 2)  # (B, T, nkv, hs) at (row b, :, pos[b, t])
        self.v[layer][rows, :, pos] = v.transpose(1, 2)
        return self.k[layer][:pos.size(0), :, :S], self.v[layer][:pos.size(0), :, :S]

    def window_mask(self, window: int) -> torch.Tensor:
        """``mask`` for a sliding-window layer: each query sees only the last ``window`` of its keys (its own
        included). Built once per forward."""
        if self._window is None or self._window[0] != window:
            if window in self.ring_windows.values():  # rings (one-token steps): slot s holds position p <= q,
                q = self._pos[..., None]  # (B, 1, 1)  # the latest with p % w == s; p < 0: never written
                p = q - (q - torch.arange(window, device=q.device)) % window  # (B, 1, w)
                self._window = (window, (p >= 0).unsqueeze(1))  # (B, 1, 1, w)
            else:
                S = self.mask.size(-1)  # type: ignore[union-attr]
                recent = torch.arange(S, device=self._pos.device) > self._pos[..., None] - window  # (B, T, S)
                self._window = (window, self.mask & recent.unsqueeze(1))  # (B, 1, T, S)
        return self._window[1]

    @torch.inference_mode()  # the buffers may be inference tensors (grown during a forward)
    def add_rows(self, other: KVCache) -> None:
        """Append ``other``'s rows (e.g. newly prefilled requests) after this cache's rows, with their lengths."""
        assert self.lens is not None, "add_rows() is for per-row caches (per_row=True)"
        n, m = self.batch_size, other.batch_size
        lens = other.lens[:m] if other.lens is not None else torch.full((m,), other.pos, dtype=torch.long)
        L = int(lens.max()) if m else 0
        if L > self.max_len:
            raise ValueError(f"rows of {L} positions do not fit a cache of max_len {self.max_len}")
        slots = self.k[0].size(0) if self.k else 0
        if n + m > slots or L > self.capacity:
            self._grow(L, max(n + m, 2 * slots) if n + m > slots else None)
        for mine, theirs in ((self.k, other.k), (self.v, other.v)):
            for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                if i in self.ring_windows and i in other.ring_windows:  # ring to ring: the same slots
                    a[n:n + m] = b[:m]  # (m, nkv, w, hs)
                elif i in self.ring_windows or i in other.ring_windows:  # each row's last w positions only
                    w = self.ring_windows.get(i) or other.ring_windows[i]
                    for j, Lj in enumerate(lens.tolist()):
                        held = torch.arange(max(0, Lj - w), Lj, device=a.device)  # (<= w,) the rest is out of view
                        dst = held % w if i in self.ring_windows else held
                        src = held % w if i in other.ring_windows else held
                        a[n + j, :, dst] = b[j, :, src]
                else:
                    a[n:n + m, :, :L] = b[:m, :, :L]  # (m, nkv, L, hs)
        self.lens[n:n + m] = lens.to(self.lens.device)
        self.batch_size, self.pos = n + m, max(self.pos, L)

    @torch.inference_mode()  # the buffers may be inference tensors (grown during a forward)
    def remove_row(self, b: int) -> None:
        """Drop row ``b``: the last row moves into its place (callers re-index their rows the same way)."""
        assert self.lens is not None, "remove_row() is for per-row caches (per_row=True)"
        last = self.batch_size - 1
        if b != last:
            L = int(self.lens[last])
            for buf in (self.k, self.v):
                for i, t in enumerate(buf):
                    if i in self.ring_windows:
                        t[b] = t[last]  # (nkv, w, hs)
                    else:
                        t[b, :, :L] = t[last, :, :L]
            self.lens[b] = self.lens[last]
        self.batch_size = last
        self.pos = int(self.lens[:last].max()) if last else 0
