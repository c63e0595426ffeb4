"""CLI for pretraining: ``python -m llm_core.training --data shakespeare --tokenizer char --preset nano --out DIR``.

Every ``TrainConfig`` field is a flag (``--max-steps``, ``--batch-size``, ``--lr`` ...); ``--recipe NAME`` starts
from a named recipe in ``PRETRAIN_PRESETS``. The same command under ``torchrun --nproc_per_node=N`` trains
with DistributedDataParallel. The Python API lives in :mod:`llm_core.training.trainer`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from llm_core.training.train_events import CheckpointEvent, EvalEvent, SampleEvent, StatusEvent, StepEvent, TrainEvent
from llm_core.training.trainer import PRETRAIN_PRESETS, TrainConfig, TrainResult, recipe, train

__all__ = ["main", "parse_args", "TqdmProgress", "TrainConfig", "TrainResult", "PRETRAIN_PRESETS", "recipe", "train"]

_HELP = {
    "data": "'shakespeare' (built-in corpus) or text files/folders",
    "tokenizer": "char | bpe:N | a model name or checkpoint folder whose tokenizer to reuse",
    "preset": "model size preset (llm_core.model.config.PRESETS), e.g. nano, micro, small, nano-llama",
    "out_dir": "output folder: a checkpoint that chat/generation can load, plus train_state/ for --resume",
    "max_time": "training time budget in seconds (the cosine schedule then follows the clock)",
    "resume": "continue the run in --out exactly where it stopped",
}


def _opt(conv: Any) -> Any:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null", "") else conv(s)
    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm_core.training", description="Pretrain a small GPT from scratch.",
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--recipe", choices=sorted(PRETRAIN_PRESETS), help="start from a named recipe")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + (["--out"] if f.name == "out_dir" else [])
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args or isinstance(hint, types.UnionType) and type(None) in args
        base = next((a for a in args if a is not type(None)), hint)
        help_ = _HELP.get(f.name, f"default: {f.default!r}")
        if f.name == "data":
            p.add_argument(*names, dest=f.name, nargs="+", help=help_)
        elif base is bool and not optional:  # --compile / --no-compile (a recipe may have turned it on)
            p.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, help=help_)
        elif base is bool:
            p.add_argument(*names, dest=f.name, type=_opt(_bool), metavar="BOOL", help=help_)
        elif base in (int, float, str):
            p.add_argument(*names, dest=f.name, type=_opt(base) if optional else base, help=help_)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    ns = build_parser().parse_args(argv)
    given = {f.name: getattr(ns, f.name) for f in fields(TrainConfig) if hasattr(ns, f.name)}
    if isinstance(given.get("data"), list) and len(given["data"]) == 1:
        given["data"] = given["data"][0]
    try:
        if given.get("resume") and given.get("out_dir") and not getattr(ns, "recipe", None):
            cfg = _resume_config(given)
        else:
            cfg = recipe(ns.recipe, **given) if getattr(ns, "recipe", None) else TrainConfig(**given)
    except ValueError as e:
        build_parser().error(str(e))
    return cfg, ns


def _resume_config(given: dict[str, Any]) -> TrainConfig:
    """``--out DIR --resume`` continues with the run's saved settings; flags given now override them."""
    from pathlib import Path

    state = Path(given["out_dir"]) / "train_state" / "state.json"
    saved = json.loads(state.read_text()).get("train_config", {}) if state.is_file() else {}
    return TrainConfig.from_dict({**saved, **given})


class TqdmProgress:
    """Callback that drives a tqdm bar and prints evaluations, samples and checkpoints above it."""

    def __init__(self, disable: bool = False) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.bar = None
        self.disable = disable

    def __call__(self, ev: TrainEvent) -> None:
        write = self._tqdm.write
        if isinstance(ev, StepEvent):
            if self.bar is None:
                self.bar = self._tqdm(total=ev.max_steps, initial=ev.step - 1, unit="step", disable=self.disable,
                                      dynamic_ncols=True)
            self.bar.update(ev.step - self.bar.n)
            self.bar.set_postfix(loss=f"{ev.loss:.4f}", lr=f"{ev.lr:.2e}", tok_s=f"{ev.tokens_per_s:,.0f}",
                                 refresh=False)
        elif isinstance(ev, EvalEvent):
            write(f"step {ev.step}: val loss {ev.val_loss:.4f} (perplexity {ev.val_ppl:.2f})")
        elif isinstance(ev, SampleEvent):
            write(f"--- sample at step {ev.step} ---\n{ev.text}\n---")
        elif isinstance(ev, CheckpointEvent):
            write(f"saved checkpoint at step {ev.step} to {ev.path} ({ev.reason})")
        elif isinstance(ev, StatusEvent) and (ev.total is None or ev.done == ev.total):
            write(ev.message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def ctrl_c_stops(message: str) -> Iterator[threading.Event]:
    """An event the first Ctrl-C sets (printing ``message``) so a long run can stop cleanly; a second Ctrl-C aborts.
    The previous handler comes back on exit; off the main thread (where signals cannot be caught) it is a plain
    event."""
    import signal

    stop = threading.Event()

    def on_sigint(signum, frame):  # noqa: ANN001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"\n{message} (Ctrl-C again to abort) ...", file=sys.stderr)

    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        yield stop
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def main(cfg: TrainConfig, as_json: bool = False, quiet: bool = False) -> TrainResult:
    """Train with a progress bar. The first Ctrl-C stops after the current step and saves a checkpoint
    (resume it with --resume); a second one aborts."""
    import os

    progress = TqdmProgress(disable=quiet)
    with ctrl_c_stops("stopping after this step and saving a checkpoint") as stop:
        try:
            result = train(cfg, callbacks=progress, stop_event=stop)
        finally:
            progress.close()

    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in result.__dict__.items() if k not in ("losses", "model_config")}
        if as_json:
            print(json.dumps(summary))
        else:
            val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
            print(f"done ({result.stop_reason}): {result.steps} steps, val loss {val}, "
                  f"{result.tokens_per_s:,.0f} tokens/s; checkpoint in {result.out_dir}")
    return result


def cli(argv: list[str] | None = None) -> None:
    """``python -m llm_core.training``: parse flags, train, and turn a bad setting into one line on stderr."""
    cfg, ns = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        main(cfg, as_json=getattr(ns, "json", False), quiet=getattr(ns, "quiet", False))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
