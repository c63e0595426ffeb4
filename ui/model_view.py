"""Pure presentation of a model for the Model tab: an architecture summary, a parameter table grouped by
module, token labels, attention heatmaps (one head, a whole layer as a grid, or the head average) and a short
per-head profile (where each head looks). Numbers come from the model; nothing here changes it."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import numpy as np

MAX_ATTN_TOKENS = 64  # a heatmap with more labels is unreadable


def llama_family(cfg: Any) -> str:
    """Llama-style models in words, naming what Qwen adds (q/k/v biases: Qwen2; q/k RMSNorm: Qwen3)."""
    extras = [x for x, on in (("q/k/v biases (Qwen2-style)", getattr(cfg, "qkv_bias", False)),
                              ("RMSNorm on q and k (Qwen3-style)", getattr(cfg, "qk_norm", False))) if on]
    base = "Llama family: RoPE positions, RMSNorm, SwiGLU MLP"
    return f"{base}, {', '.join(extras)}" if extras else f"{base}, no biases"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _gpt(model: Any) -> Any:
    """``llm_core.model.base_gpt``, imported on use so building the UI loads no torch."""
    from llm_core.model import base_gpt

    return base_gpt(model)


def architecture_markdown(model: Any, label: str = "") -> str:
    cfg = _gpt(model).config
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    p0 = params[0]
    bytes_ = sum(p.numel() * p.element_size() for p in params)
    family = ("GPT-2 family: learned positions, LayerNorm, GELU MLP, biases" if cfg.arch == "gpt2"
              else llama_family(cfg))
    attn = (f"{cfg.n_head} heads" if cfg.n_kv_head == cfg.n_head
            else f"{cfg.n_head} query heads sharing {cfg.n_kv_head} key/value heads (grouped-query attention)")
    rows = [
        ("Family", family),
        ("Layers (transformer blocks)", str(cfg.n_layer)),
        ("Attention", f"{attn}, head size {cfg.head_dim}"),
        ("Embedding width", str(cfg.n_embd)),
        ("MLP hidden width", str(cfg.intermediate_size)),
        ("Context length", f"{fmt_int(cfg.block_size)} tokens"),
        ("Vocabulary", f"{fmt_int(cfg.vocab_size)} tokens"),
        ("Parameters", f"{fmt_int(total)} ({fmt_params(total)}); tied input/output embeddings: "
                       f"{'yes' if cfg.tie_embeddings else 'no'}"),
        ("Memory", f"{bytes_ / 2**20:.0f} MiB as {str(p0.dtype).replace('torch.', '')} on {p0.device}"),
    ]
    if trainable_lora:
        rows.append(("LoRA adapter", f"{fmt_int(trainable_lora)} extra parameters "
                                     f"({100 * trainable_lora / max(1, total - trainable_lora):.2f}% of the base)"))
    head = f"### {label}\n\n" if label else ""
    return head + "| Property | Value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


_LAYER = re.compile(r"blocks\.(\d+)\.")


def parameter_rows(model: Any) -> list[list[Any]]:
    """[module, shape, params per layer, × layers, total, share %] grouped over the repeated blocks."""
    groups: OrderedDict[str, dict] = OrderedDict()
    n_layer = _gpt(model).config.n_layer
    total = 0
    for name, p in model.named_parameters():  # tied weights appear once
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        key = _LAYER.sub("blocks.*.", name)
        key = re.sub(r"\.(weight|bias)$", "", key)
        g = groups.setdefault(key, {"shapes": [], "n": 0, "layers": set()})
        g["n"] += p.numel()
        if (m := _LAYER.search(name)) is not None:
            g["layers"].add(m.group(1))
        shape = "×".join(str(s) for s in p.shape)
        if shape not in g["shapes"] and (m is None or m.group(1) == min(g["layers"], key=int)):
            g["shapes"].append(shape)
        total += p.numel()
    rows = []
    for key, g in groups.items():
        layers = len(g["layers"]) or 1
        rows.append([key, " + ".join(g["shapes"]), fmt_int(g["n"] // layers), f"×{layers}" if key.startswith(
            "blocks.*") else "", fmt_int(g["n"]), round(100 * g["n"] / max(1, total), 2)])
    if getattr(_gpt(model).config, "tie_embeddings", False):
        rows.append(["lm_head", "(shares tok_emb's matrix)", "0", "", "0", 0.0])
    rows.append(["total", "", "", f"{n_layer} blocks", fmt_int(total), 100.0])
    return rows


PARAM_HEADERS = ["module", "shape (weight + bias)", "params per layer", "layers", "params", "share %"]


def visible_piece(b: bytes) -> str:
    """A token's bytes as readable text: spaces, newlines and tabs made visible, bytes of a split UTF-8
    character shown as ``\\xNN``."""
    s = b.decode("utf-8", errors="backslashreplace")
    return s.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def token_labels(tokenizer: Any, ids: list[int]) -> list[str]:
    """Readable labels for token ids (for heatmap axes)."""
    return [visible_piece(tokenizer.id_to_piece(i)) for i in ids]


def induction_targets(ids: list[int]) -> list[tuple[int, int]]:
    """(query, key) pairs an induction head attends: from a repeated token to the token that followed its
    previous occurrence (``A B ... A`` -> from the second ``A`` to ``B``)."""
    last: dict[int, int] = {}
    pairs = []
    for q, t in enumerate(ids):
        if t in last and last[t] + 1 < q:
            pairs.append((q, last[t] + 1))
        last[t] = q
    return pairs


def head_profile(maps: np.ndarray, ids: list[int] | None = None) -> list[list[Any]]:
    """Per head of every layer: entropy and where the attention goes (first token, previous token, itself and,
    when the prompt repeats itself, the induction target).

    maps: (L, H, T, T) with rows summing to 1. Rows from query position 1 on (position 0 can only look at itself).
    """
    L, H, T, _ = maps.shape
    rows = []
    if T < 2:
        return rows
    q = np.arange(1, T)
    pairs = induction_targets(ids) if ids is not None else []
    pq = np.array([a for a, _ in pairs], dtype=int)
    pk = np.array([b for _, b in pairs], dtype=int)
    for layer in range(L):
        for h in range(H):
            a = maps[layer, h, 1:, :]  # (T-1, T)
            ent = float(np.mean(-(a * np.log(a + 1e-12)).sum(-1)))
            first = float(np.mean(a[:, 0]))
            prev = float(np.mean(a[np.arange(T - 1), q - 1]))
            self_ = float(np.mean(a[np.arange(T - 1), q]))
            ind = float(np.mean(maps[layer, h, pq, pk])) if len(pairs) else float("nan")
            scores = [("first-token (sink)", first), ("previous-token", prev), ("self", self_)]
            if len(pairs):
                scores.append(("induction", ind * 1.5))  # sparse pattern: a smaller share is already telling
            kind = max(scores, key=lambda kv: kv[1])
            role = kind[0] if kind[1] >= 0.4 else ("broad / content" if ent > 1.0 else "focused / content")
            rows.append([layer, h, round(ent, 3), round(first, 3), round(prev, 3), round(self_, 3),
                         None if not len(pairs) else round(ind, 3), role])
    return rows


HEAD_HEADERS = ["layer", "head", "entropy (nats)", "→ first token", "→ previous token", "→ itself",
                "→ induction target", "looks like"]


def _heat(ax: Any, m: np.ndarray, labels: list[str], title: str, show_labels: bool, fontsize: int) -> Any:
    mask = np.triu(np.ones_like(m, dtype=bool), k=1)  # future positions: never attended (causal)
    from matplotlib.colors import PowerNorm

    # square-root colour scale: the sink column holds most of the mass; this keeps the rest visible
    im = ax.imshow(np.ma.masked_array(m, mask), cmap="magma", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0),
                   interpolation="nearest")
    ax.set_facecolor("#e8e8ee")
    ax.set_title(title, fontsize=fontsize + 1)
    T = len(labels)
    if show_labels:
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        ax.set_xticklabels(labels, rotation=90, fontsize=fontsize)
        ax.set_yticklabels(labels, fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return im


def attention_figure(maps: np.ndarray, labels: list[str], layer: int, head: int | None, view: str) -> Any:
    """Matplotlib figure. view: 'head' (one head), 'grid' (every head of the layer), 'mean' (head average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, H, T, _ = maps.shape
    layer = int(np.clip(layer, 0, L - 1))
    fs = 9 if T <= 24 else 7 if T <= 40 else 5
    if view == "grid":
        cols = int(np.ceil(np.sqrt(H)))
        rows = int(np.ceil(H / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.1 * rows), squeeze=False)
        for h in range(rows * cols):
            ax = axes[h // cols][h % cols]
            if h >= H:
                ax.axis("off")
                continue
            _heat(ax, maps[layer, h], labels, f"head {h}", show_labels=T <= 16, fontsize=6)
        fig.suptitle(f"Layer {layer}: all {H} heads (rows = query token, columns = attended token)", fontsize=11)
        fig.tight_layout()
        return fig
    size = min(11.0, 4.0 + 0.17 * T)
    fig, ax = plt.subplots(figsize=(size + 1.4, size))
    if view == "mean":
        m = maps[layer].mean(0)
        title = f"Layer {layer}, average of {H} heads"
    else:
        h = int(np.clip(head or 0, 0, H - 1))
        m = maps[layer, h]
        title = f"Layer {layer}, head {h}"
    im = _heat(ax, m, labels, title, show_labels=True, fontsize=fs)
    ax.set_xlabel("attended token (key)")
    ax.set_ylabel("query token (the one being processed)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight (square-root colour scale)")
    fig.tight_layout()
    return fig


ATTENTION_HELP = """
**How to read it.** Each row is a token of your prompt as the model processes it (the *query*); the row shows how
that token spreads its attention over itself and the tokens before it (the *keys*). Rows sum to 1. The upper-right
triangle is grey because a causal language model cannot look at future tokens.

**Patterns to look for.** A bright first column is an *attention sink*: heads with nothing useful to do park their
attention on the first token. A bright line just below the diagonal is a *previous-token head*. In later layers,
heads that jump to the token *after* an earlier copy of the current token are *induction heads*: they let the model
continue a pattern it has seen before (try a prompt that repeats a phrase). The table under the plot profiles every
head this way; sort it by a column to find, say, the strongest induction heads.
"""
