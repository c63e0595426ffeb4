"""Conversations -> token ids + labels exactly as the model will see them at chat time.

Each assistant turn is rendered with the model's own chat template: the prompt part is
``apply_chat_template(messages[:i], add_generation_prompt=True)`` (what chat sends before generating) and the
answer part is the rest of ``apply_chat_template(messages[:i+1])`` (the answer plus the end-of-turn marker, so
the model learns to stop). Prompt tokens get label -100 (no loss), answer tokens keep their ids.
Sequences longer than ``max_length`` are cut from the right and counted, never silently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import torch

from finetune.data import Dataset, Example

IGNORE_INDEX = -100


class ChatTokenizer(Protocol):
    eos_token_id: int | None
    pad_token_id: int | None

    def encode(self, text: str, allowed_special: str | set = "all") -> list[int]: ...
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str: ...


@dataclass
class Rendered:
    """One training sequence: ``labels[i]`` is ``input_ids[i]`` where the loss counts, else -100."""

    input_ids: list[int]
    labels: list[int]
    line: int
    truncated: bool = False


@dataclass
class RenderStats:
    n_sequences: int = 0
    n_truncated: int = 0  # cut to max_length (some answer tokens lost)
    n_dropped: int = 0  # nothing left to learn after truncation
    n_tokens: int = 0
    n_trained_tokens: int = 0
    longest: int = 0  # before truncation
    max_length: int = 0

    def summary(self) -> str:
        s = (f"{self.n_sequences} sequences, {self.n_tokens} tokens ({self.n_trained_tokens} trained), "
             f"longest {self.longest} tokens")
        if self.n_truncated or self.n_dropped:
            s += (f"; {self.n_truncated} truncated to max_length={self.max_length}, "
                  f"{self.n_dropped} dropped (no answer tokens left)")
        return s


def segments(tokenizer: ChatTokenizer, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, trained) pieces; trained = assistant answer + end marker."""
    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("the chat template does not render conversations incrementally (a rendered prefix "
                             "changes when a turn is added), so prompt tokens cannot be masked reliably")
        if len(prompt) > len(done):
            out.append((prompt[len(done):], False))
        out.append((full[len(prompt):], True))
        done = full
    return out


def render_example(tokenizer: ChatTokenizer, ex: Example, max_length: int) -> tuple[Rendered, int]:
    """Tokenize piece by piece (the prompt exactly as chat encodes it); returns (sequence, length before cut)."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments(tokenizer, ex.messages):
        t = tokenizer.encode(text, allowed_special="all")
        ids += t
        labels += t if trained else [IGNORE_INDEX] * len(t)
    n = len(ids)
    return Rendered(ids[:max_length], labels[:max_length], ex.line, truncated=n > max_length), n


def chunk_text(tokenizer: ChatTokenizer, texts: list[tuple[str, int]], max_length: int) -> list[Rendered]:
    """Continued pretraining: documents joined with EOS and cut into windows of max_length that overlap by one
    token, so every token is predicted exactly once."""
    ids: list[int] = []
    for doc, _ in texts:
        ids += tokenizer.encode(doc, allowed_special=set())
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    out = []
    step = max(1, max_length - 1)
    for s in range(0, max(1, len(ids) - 1), step):
        piece = ids[s: s + max_length]
        if len(piece) >= 2:
            out.append(Rendered(piece, list(piece), texts[0][1] if texts else 1))
    return out


def prepare(ds: Dataset, tokenizer: ChatTokenizer, max_length: int) -> tuple[list[Rendered], RenderStats]:
    """Render a whole dataset; drops (and counts) sequences with no trained token left after truncation."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    st = RenderStats(max_length=max_length)
    if ds.format == "text":
        seqs = chunk_text(tokenizer, ds.texts, max_length)
        st.longest = max((len(r.input_ids) for r in seqs), default=0)
    else:
        seqs = []
        for ex in ds.examples:
            r, n = render_example(tokenizer, ex, max_length)
            st.longest = max(st.longest, n)
            # label at position 0 is never predicted (nothing precedes it), so it must be a later one
            if all(lab == IGNORE_INDEX for lab in r.labels[1:]):
                st.n_dropped += 1
                continue
            st.n_truncated += r.truncated
            seqs.append(r)
    st.n_sequences = len(seqs)
    st.n_tokens = sum(len(r.input_ids) for r in seqs)
    st.n_trained_tokens = sum(sum(lab != IGNORE_INDEX for lab in r.labels[1:]) for r in seqs)
    return seqs, st


def train_val_split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then the last ``val_fraction`` (at least one item when there are two or more) for
    validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_val = int(round(len(items) * val_fraction))
    if val_fraction > 0 and n_val == 0 and len(items) >= 2:
        n_val = 1
    train = [items[i] for i in idx[: len(items) - n_val]]
    val = [items[i] for i in idx[len(items) - n_val:]]
    return train, val


def collate(batch: list[Rendered], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad into (idx, targets) shifted by one: targets[t] is the label of token t+1 (-100 on padding).
    Causal attention means right padding never changes the real positions' outputs."""
    T = max(len(r.input_ids) for r in batch) - 1
    idx = torch.full((len(batch), T), pad_id, dtype=torch.long)  # (B, T)
    tgt = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for b, r in enumerate(batch):
        n = len(r.input_ids) - 1
        idx[b, :n] = torch.tensor(r.input_ids[:-1])
        tgt[b, :n] = torch.tensor(r.labels[1:])
    return idx, tgt


def pad_id_of(tokenizer: ChatTokenizer) -> int:
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return v
    return 0


# ---- preview ---------------------------------------------------------------------------------------------------
@dataclass
class PreviewItem:
    line: int
    pieces: list[tuple[str, bool]]  # (text, trained): for a highlighted view in the UI
    n_tokens: int
    n_trained: int
    truncated: bool


def preview(ds: Dataset, tokenizer: ChatTokenizer, n: int = 3, max_length: int = 512) -> list[PreviewItem]:
    """The first ``n`` examples as the model will see them, with the trained (unmasked) parts marked."""
    items = []
    if ds.format == "text":
        for r in chunk_text(tokenizer, ds.texts, max_length)[:n]:
            items.append(PreviewItem(r.line, [(tokenizer.decode(r.input_ids), True)],  # type: ignore[attr-defined]
                                     len(r.input_ids), len(r.input_ids) - 1, False))
        return items
    for ex in ds.examples[:n]:
        r, total = render_example(tokenizer, ex, max_length)
        items.append(PreviewItem(ex.line, segments(tokenizer, ex.messages), total,
                                 sum(lab != IGNORE_INDEX for lab in r.labels[1:]), r.truncated))
    return items


def format_preview(items: list[PreviewItem]) -> str:
    """Plain-text preview for the CLI: trained text between ⟦ ⟧, everything else is masked (label -100)."""
    out = []
    for k, it in enumerate(items, start=1):
        note = " (TRUNCATED)" if it.truncated else ""
        out.append(f"--- example {k} (line {it.line}): {it.n_tokens} tokens, {it.n_trained} trained{note} ---")
        out.append("".join(f"⟦{t}⟧" if trained else t for t, trained in it.pieces))
    out.append("(text inside ⟦ ⟧ is learned; everything else is context with label -100)")
    return "\n".join(out)
