"""The experiment: the same tiny GPT, trained for the same wall time with each tokenizer, scored in bits per byte.

Loss per token is not comparable across vocabularies (a model whose tokens are longer predicts fewer, harder
tokens). Bits per byte divides the total loss on held-out text by its UTF-8 bytes, so it is fair across them.

Recipe: the text's first 90% trains every tokenizer and then, through the project's pretraining trainer
(:func:`llm_core.training.trainer.train`, nothing new), one model per tokenizer for ``seconds`` of wall time; the last 10%
is scored with :func:`llm_core.labs.perplexity.perplexity` in back-to-back windows of the model's context. A character vocabulary is built from the whole text's
characters (else an unseen character in the held-out part could not be encoded at all). WordPiece maps unknown
words to [UNK] and drops whitespace: its bits cover less information, which flatters it a little.

This module imports the trainer (torch); ``llm_core.tokenizer`` itself does not import it.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llm_core.labs.perplexity import perplexity
from llm_core.training.trainer import recipe, train
from llm_core.weights.checkpoint import load_checkpoint

from .char import CharTokenizer
from .compare import TRAINED, train_kind


@dataclass
class BpbRow:
    name: str
    vocab_size: int
    steps: int
    train_s: float
    val_tokens: int
    nll_per_token: float
    bits_per_byte: float

    def to_dict(self) -> dict:
        return asdict(self)


def split_text(text: str, held_out: float = 0.1) -> tuple[str, str]:
    """(train, held-out) at a line break near the ``1 - held_out`` point."""
    cut = int(len(text) * (1 - held_out))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl > len(text) // 2 else cut
    return text[:cut], text[cut:]


def bpb_experiment(text: str | bytes, vocab_size: int, seconds: float, kinds: tuple[str, ...] | list[str] = TRAINED,
                   recipe_name: str = "tiny", block_size: int = 64, work_dir: str | Path | None = None,
                   max_eval_bytes: int = 8_000,
                   progress: Callable[[str], None] | None = None,
                   stop_event: threading.Event | None = None) -> list[BpbRow]:
    """One row per tokenizer kind: the same model recipe trained ``seconds`` with it, then held-out bits per byte
    (on at most ``max_eval_bytes`` of the held-out text, so scoring stays quick). ``bytes`` are decoded like the
    RAG loaders decode files (a non-UTF-8 guess is logged as a warning)."""
    if isinstance(text, (bytes, bytearray)):
        import logging

        from llm_core.textfile import decode_text

        found: list[str] = []
        text = decode_text(bytes(text), "text", found)
        for w in found:
            logging.getLogger(__name__).warning(w)
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    train_text, held = split_text(text)
    held = held[:max_eval_bytes]
    if len(held.strip()) < 100:
        raise ValueError(f"the text is too short for this experiment: its held-out tenth is {len(held)} characters; "
                         "give at least a few thousand characters")
    stop_event = stop_event or threading.Event()
    rows: list[BpbRow] = []
    threads = torch.get_num_threads()  # the runs use one thread; the caller's setting comes back after
    with tempfile.TemporaryDirectory(prefix="bpb-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        data_file = root / "train.txt"
        root.mkdir(parents=True, exist_ok=True)
        data_file.write_text(train_text, encoding="utf-8")
        for kind in kinds:
            if stop_event.is_set():
                break
            if progress is not None:
                progress(f"{kind}: training the tokenizer")
            tok = (CharTokenizer.train(text, special_tokens=("<|endoftext|>",)) if kind == "char"
                   else train_kind(kind, train_text, vocab_size))
            tok_dir = root / kind / "tokenizer"
            tok.save(tok_dir)
            if progress is not None:
                progress(f"{kind}: training the model for {seconds:g} s")
            cfg = recipe(recipe_name, data=[str(data_file)], tokenizer=str(tok_dir), out_dir=str(root / kind / "run"),
                         max_steps=None, max_time=float(seconds), eval_interval=0, checkpoint_interval=0,
                         sample_interval=0, data_cache=str(root / "cache"), val_fraction=0.05, device="cpu",
                         block_size=block_size, num_threads=1)  # a tiny model gains nothing from more threads,
            # and on a busy CPU their contention (not the tokenizer) would decide how many steps each run gets
            try:
                res = train(cfg, stop_event=stop_event)
                model, saved_tok = load_checkpoint(res.out_dir)
                score = perplexity(model, saved_tok, held, stride=model.config.block_size)
            finally:
                torch.set_num_threads(threads)
            rows.append(BpbRow(name=kind, vocab_size=tok.vocab_size, steps=res.steps, train_s=res.train_s,
                               val_tokens=score.tokens, nll_per_token=score.nll_per_token,
                               bits_per_byte=score.bits_per_byte))
    return rows
