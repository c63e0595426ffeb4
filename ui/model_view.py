"""Pure presentation of a model for the Model tab: an architecture summary, a parameter table grouped by
module, token labels, attention heatmaps (one head, a whole layer as a grid, or the head average) and a short
per-head profile (where each head looks). The numbers come from ``llm_core.labs.model_inspect``; this module only
formats them."""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_core.labs.model_inspect import (
    MAX_ATTN_TOKENS,
    ModelSummary,
    ParamGroup,
    head_stats,
    induction_targets,
    model_summary,
    param_groups,
)

__all__ = ["MAX_ATTN_TOKENS", "induction_targets", "architecture_markdown", "parameter_rows", "head_profile",
           "summary_markdown", "summary_rows",
           "token_labels", "visible_piece", "attention_figure", "llama_family"]


def llama_family(cfg: Any) -> str:
    """Llama-style models in words, naming what Qwen and Gemma add (q/k/v biases: Qwen2; q/k RMSNorm: Qwen3 and
    Gemma 3; GeGLU, sandwich norms, scaled embeddings and sliding-window layers: Gemma 3)."""
    window = getattr(cfg, "sliding_window", None)
    extras = [x for x, on in (("q/k/v biases (Qwen2-style)", getattr(cfg, "qkv_bias", False)),
                              ("RMSNorm on q and k (Qwen3, Gemma 3)", getattr(cfg, "qk_norm", False)),
                              ("norms before and after attention and MLP (Gemma 3)", getattr(cfg, "sandwich_norm", False)),
                              ("embeddings scaled by sqrt(width) (Gemma 3)", getattr(cfg, "scale_embeddings", False)),
                              (f"sliding-window attention over {window} tokens on most layers (Gemma 3)", window))
              if on]
    mlp = "GeGLU MLP" if getattr(cfg, "activation", None) in ("gelu_tanh", "gelu") else "SwiGLU MLP"
    base = f"Llama family: RoPE positions, RMSNorm, {mlp}"
    return f"{base}, {', '.join(extras)}" if extras else f"{base}, no biases"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _gpt(model: Any) -> Any:
    """``llm_core.model.gpt.base_gpt``, imported on use so building the UI loads no torch."""
    from llm_core.model.gpt import base_gpt

    return base_gpt(model)


def architecture_markdown(model: Any, label: str = "") -> str:
    return summary_markdown(model_summary(model), label)


def summary_markdown(s: ModelSummary, label: str = "") -> str:
    """The architecture table of a ``llm_core.labs.model_inspect.ModelSummary``."""
    cfg = s.config
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
        ("Parameters", f"{fmt_int(s.total)} ({fmt_params(s.total)}); tied input/output embeddings: "
                       f"{'yes' if cfg.tie_embeddings else 'no'}"),
        ("Memory", f"{s.nbytes / 2**20:.0f} MiB as {s.dtype} on {s.device}"),
    ]
    if s.lora:
        rows.append(("LoRA adapter", f"{fmt_int(s.lora)} extra parameters "
                                     f"({100 * s.lora / max(1, s.total - s.lora):.2f}% of the base)"))
    head = f"### {label}\n\n" if label else ""
    return head + "| Property | Value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def parameter_rows(model: Any) -> list[list[Any]]:
    """[module, shape, params per layer, × layers, total, share %] grouped over the repeated blocks."""
    return summary_rows(_gpt(model).config, param_groups(model))


def summary_rows(cfg: Any, groups: list[ParamGroup]) -> list[list[Any]]:
    """The parameter table of ``llm_core.labs.model_inspect`` parameter groups (``ModelSummary.groups``)."""
    total = sum(g.params for g in groups)
    rows: list[list[Any]] = [
        [g.name, " + ".join(g.shapes), fmt_int(g.params // g.layers),
         f"×{g.layers}" if g.name.startswith("blocks.*") else "", fmt_int(g.params),
         round(100 * g.params / max(1, total), 2)] for g in groups]
    if getattr(cfg, "tie_embeddings", False):
        rows.append(["lm_head", "(shares tok_emb's matrix)", "0", "", "0", 0.0])
    rows.append(["total", "", "", f"{cfg.n_layer} blocks", fmt_int(total), 100.0])
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


def head_profile(maps: np.ndarray, ids: list[int] | None = None) -> list[list[Any]]:
    """Table rows of ``llm_core.labs.model_inspect.head_stats``: per head of every layer, its entropy, where its
    attention goes and the role that best explains it."""
    return [[s.layer, s.head, round(s.entropy, 3), round(s.first, 3), round(s.previous, 3), round(s.self_, 3),
             None if s.induction is None else round(s.induction, 3), s.role] for s in head_stats(maps, ids)]


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
