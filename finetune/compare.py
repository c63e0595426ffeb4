"""Before/after: the same held-out prompts answered by the base model and by the adapter, side by side, with the
task metric when the data has exact answers.

The prompts are the run's validation split, rebuilt the way the trainer makes it (``val_data`` when set, else the
seeded ``val_fraction`` split of the rendered data), so neither answer has been trained on. Both answers come from
one loaded model with the adapter switched off, then on (``peft`` keeps the base weights untouched), by greedy
decoding through ``llm_core.generation.generate`` (the chat path) with the prompt rendered exactly as in training.

The metric is exact match, chosen from the references: JSON objects (the demo skill) are compared as parsed JSON
with ``finetune.demo.exact_match`` (same keys, values and value types); short one-line answers (labels, numbers)
as stripped text. Free-form answers get no metric: a side-by-side read is the honest check there.
``bench/finetune.py`` computes its ``acc_before``/``acc_after`` with these same functions.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.data import Example, load_dataset

JSON_MATCH = "exact match (JSON)"
TEXT_MATCH = "exact match"
SHORT_ANSWER = 64  # characters: longer one-line references are prose, not a label to match exactly
STATE_FILE = "finetune.json"  # the run's record in its adapter folder (finetune.trainer writes it)


@dataclass
class CompareRow:
    line: int  # where the example starts in its file (a row number for Parquet)
    prompt: str  # the last user turn
    reference: str  # the answer in the data
    base: str
    adapter: str
    base_ok: bool | None = None  # None: no metric for this data
    adapter_ok: bool | None = None


@dataclass
class Comparison:
    rows: list[CompareRow] = field(default_factory=list)
    source: str = ""  # where the prompts came from, in words
    metric: str | None = None  # JSON_MATCH | TEXT_MATCH | None
    base_score: float | None = None  # share of rows right, when there is a metric
    adapter_score: float | None = None
    n_available: int = 0  # prompts in the split (rows holds the first n of them)


# ---- the metric (one place: the panel and bench/finetune.py use it) ----------------------------------------------
def metric_kind(references: list[str]) -> str | None:
    """JSON_MATCH when every reference is a JSON object, TEXT_MATCH when all are short single lines, else None."""
    if not references:
        return None

    def is_obj(s: str) -> bool:
        try:
            return isinstance(json.loads(s), dict)
        except json.JSONDecodeError:
            return False

    if all(is_obj(r) for r in references):
        return JSON_MATCH
    if all(r.strip() and "\n" not in r.strip() and len(r.strip()) <= SHORT_ANSWER for r in references):
        return TEXT_MATCH
    return None


def is_correct(kind: str | None, answer: str, reference: str) -> bool | None:
    if kind == JSON_MATCH:
        from finetune.demo import exact_match

        return exact_match(answer, reference)
    if kind == TEXT_MATCH:
        return answer.strip() == reference.strip()
    return None


def score(answers: list[str], references: list[str], kind: str | None = None) -> tuple[float | None, list[bool | None]]:
    """(share right or None without a metric, per-answer verdicts); ``kind`` defaults to ``metric_kind(refs)``."""
    kind = kind or metric_kind(references)
    oks = [is_correct(kind, a, r) for a, r in zip(answers, references)]
    return (sum(bool(o) for o in oks) / len(oks) if kind and oks else None), oks


# ---- prompts and answers ------------------------------------------------------------------------------------------
def split_example(ex: Example) -> tuple[list[dict[str, str]], str]:
    """(the conversation up to the last assistant turn, that turn's text): what to ask and what the data says."""
    last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
    return ex.messages[:last], ex.messages[last]["content"]


def last_user_turn(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def generate_answers(model: Any, tokenizer: Any, examples: list[Example], max_new_tokens: int | None = None,
                     on_answer: Callable[[int, str], None] | None = None,
                     stop_event: threading.Event | None = None) -> list[str]:
    """Greedy answers to each example's prompt. Without ``max_new_tokens`` each answer may run to its reference's
    length + 16 tokens (at least 48): room for the answer and some chatter around it, not a whole essay."""
    import torch

    from llm_core.generation.generate import GenerationConfig, generate

    ctx = int(model.config.block_size)
    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k, ex in enumerate(examples):
                if stop_event is not None and stop_event.is_set():
                    break
                msgs, ref = split_example(ex)
                ids = tokenizer.encode(tokenizer.apply_chat_template(msgs, add_generation_prompt=True))
                n = max_new_tokens or max(48, len(tokenizer.encode(ref)) + 16)
                n = min(n, ctx - len(ids))
                text = ("(the prompt does not fit in the model's context)" if n < 1 else
                        tokenizer.decode(generate(model, tokenizer, ids, GenerationConfig(max_new_tokens=n,
                                                                                          temperature=0.0))))
                out.append(text)
                if on_answer is not None:
                    on_answer(k, text)
    finally:
        model.train(was_training)
    return out


def demo_test_examples(n: int | None = None) -> list[Example]:
    """The demo skill's held-out test split (never trained on) as examples."""
    from finetune.demo import demo_data_path

    ex = load_dataset(demo_data_path()["test"]).examples
    return ex[:n] if n else ex


def validation_examples(cfg: Any, tokenizer: Any, block_size: int) -> tuple[list[Example], str]:
    """The run's validation examples, chosen as ``finetune.trainer`` chooses them, and a line saying where from.
    A run without a validation split falls back to the demo's test split (demo data) or its last examples."""
    from finetune.render import prepare, train_val_split
    from finetune.trainer import resolve_data  # the files the run trained and validated on

    ds, val_ds = resolve_data(cfg)
    if val_ds is not None:
        _reject_text(val_ds.format)
        return val_ds.examples, f"the validation file {Path(cfg.val_data).name}"
    _reject_text(ds.format)
    demo = cfg.data == "demo"
    name = "the demo data" if demo else Path(cfg.data).name
    seqs, _ = prepare(ds, tokenizer, min(cfg.max_length, block_size + 1))  # as the trainer renders it
    _, val = train_val_split(seqs, cfg.val_fraction, cfg.seed)
    if val:
        by_line = {ex.line: ex for ex in ds.examples}
        return [by_line[r.line] for r in val], f"the validation split of {name} ({len(val)} examples, never trained on)"
    if demo:
        return demo_test_examples(), "the demo's held-out test split (this run kept no validation split)"
    return ds.examples[-8:], f"the last examples of {name} (this run kept no validation split: they were trained on)"


def _reject_text(fmt: str) -> None:
    if fmt == "text":
        raise ValueError("this run continued pretraining on plain text: there are no prompts and answers to compare")


# ---- base vs adapter ---------------------------------------------------------------------------------------------
def compare(switch: Any, tokenizer: Any, examples: list[Example], *,
            generating: Callable[[bool], contextlib.AbstractContextManager] | None = None,
            on_progress: Callable[[int, int], None] | None = None, stop_event: threading.Event | None = None,
            max_new_tokens: int | None = None) -> Comparison:
    """Each prompt answered with the adapter off (base) and on. ``switch`` is a ``finetune.AdapterSwitch``;
    ``generating(use_adapter)`` (default: the switch itself) holds the model while one answer is generated, so
    a chat reply sharing the model waits instead of seeing the adapter flip mid-answer."""
    hold = generating or (lambda on: _switched(switch, on))
    total = 2 * len(examples)
    base: list[str] = []
    adapted: list[str] = []
    for k, ex in enumerate(examples):
        if stop_event is not None and stop_event.is_set():
            break
        for on, dest in ((False, base), (True, adapted)):
            with hold(on):
                dest += generate_answers(switch.model, tokenizer, [ex], max_new_tokens)
            if on_progress is not None:
                on_progress(2 * k + on + 1, total)
    refs = [split_example(ex)[1] for ex in examples[:len(adapted)]]  # a stop keeps the pairs done so far
    kind = metric_kind(refs)
    base_score, base_ok = score(base, refs, kind)
    ad_score, ad_ok = score(adapted, refs, kind)
    rows = [CompareRow(ex.line, last_user_turn(split_example(ex)[0]), ref, b, a, bo, ao)
            for ex, ref, b, a, bo, ao in zip(examples, refs, base, adapted, base_ok, ad_ok)]
    return Comparison(rows, "", kind, base_score, ad_score, len(examples))


@contextlib.contextmanager
def _switched(switch: Any, on: bool) -> Iterator[None]:
    was = switch.enabled
    switch.set_enabled(on)
    try:
        yield
    finally:
        switch.set_enabled(was)


def run_config(folder: str | Path) -> Any:
    """The ``FinetuneConfig`` an adapter was trained with (from its ``finetune.json``)."""
    from finetune.config import FinetuneConfig

    p = Path(folder) / STATE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{Path(folder).name}: no {STATE_FILE} (not a run of this app), so its validation "
                                "data is unknown")
    return FinetuneConfig.from_dict(json.loads(p.read_text(encoding="utf-8"))["config"])


def compare_adapter(folder: str | Path, n: int = 8, *, switch: Any = None, tokenizer: Any = None,
                    generating: Callable[[bool], contextlib.AbstractContextManager] | None = None,
                    on_progress: Callable[[int, int], None] | None = None,
                    stop_event: threading.Event | None = None) -> Comparison:
    """Up to ``n`` validation prompts of the run in ``folder``: base vs adapter answers and the metric. Pass an
    already loaded ``switch`` (+ ``tokenizer``) to reuse it; otherwise the adapter and its base are loaded."""
    if n < 1:
        raise ValueError(f"the number of prompts must be at least 1, got {n}")
    cfg = run_config(folder)
    if switch is None:
        from finetune.lora import AdapterSwitch, load_adapted

        pm, tokenizer = load_adapted(folder)
        switch = AdapterSwitch(pm, folder)
    if tokenizer is None:
        raise ValueError("a tokenizer is needed with a preloaded adapter")
    examples, source = validation_examples(cfg, tokenizer, int(switch.model.config.block_size))
    res = compare(switch, tokenizer, examples[:n], generating=generating, on_progress=on_progress,
                  stop_event=stop_event)
    res.source, res.n_available = source, len(examples)
    return res
