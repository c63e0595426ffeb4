"""Command line: ``python -m llm_core generate --prompt "..."`` and ``python -m llm_core chat``.

    python -m llm_core generate --model smollm2-135m-instruct --prompt "What is the capital of France?" --temperature 0
    python -m llm_core generate --prompt "Once upon a time" --raw --temperature 0   # plain completion
    python -m llm_core chat --dtype int8          # /reset clears the history, /exit (or Ctrl-D) quits

Sampling settings not given take the model's own defaults (SmolLM2: its published temperature 0.2, top-p 0.9), and
the system prompt the one its chat template inserts. ``--model`` takes a model name, one of our checkpoint
folders, a Hugging Face folder or a .gguf file.
Errors in the input (unknown model, bad settings) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from dataclasses import dataclass, field, fields

import torch

from llm_core.chat import ChatSession, build_chat_prompt, chat_defaults
from llm_core.generate import GenerationConfig, GenerationStats, stream_generate
from llm_core.hub import DEFAULT_MODEL
from llm_core.quantize import MODES, load_quantized, parse_mode


@dataclass
class SamplingArgs:
    """Command-line settings; a sampling field left at None takes the model's own default (``chat_defaults``)."""

    model: str = DEFAULT_MODEL
    max_new_tokens: int = 256
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    dtype: str = "fp32"
    threads: int | None = None
    system: str | None = None  # None = the system prompt the model's chat template inserts
    stats: bool = False  # print tokens/s and time to first token on stderr

    def generation_config(self, defaults: GenerationConfig | None = None) -> GenerationConfig:
        """Over the model's defaults, the settings given on the command line."""
        cfg = dataclasses.replace(defaults) if defaults is not None else GenerationConfig()
        for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
            if getattr(self, name) is not None:
                setattr(cfg, name, getattr(self, name))
        cfg.max_new_tokens, cfg.stop, cfg.seed = self.max_new_tokens, list(self.stop), self.seed
        cfg.validate()
        return cfg


@dataclass
class GenerateArgs(SamplingArgs):
    prompt: str = ""
    raw: bool = False  # plain text completion instead of one user turn in the model's chat template


@dataclass
class ChatArgs(SamplingArgs):
    pass


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit status 2."""


def load(args: SamplingArgs):  # noqa: ANN201 - (GPT, Tokenizer)
    """The model in ``--dtype``, built straight in that precision (an int8 model never holds its fp32 weights)."""
    mode = parse_mode(args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return load_quantized(args.model, mode)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(str(e).strip("'\"")) from e
    except OSError as e:
        raise UsageError(f"cannot load model {args.model!r}: {e}") from e


def _print_stats(st: GenerationStats) -> None:
    print(f"[{st.summary()} · stop: {st.stop_reason}]", file=sys.stderr, flush=True)


def run_generate(args: GenerateArgs) -> int:
    if not args.prompt:
        raise UsageError("--prompt is empty: give the text to continue")
    args.generation_config()  # bad settings fail before the model loads
    model, tok = load(args)
    cfg = args.generation_config(chat_defaults(model, tok).config)
    if args.raw or not getattr(tok, "chat_template", None):
        ids = tok.encode(args.prompt, allowed_special="all")
    else:  # an instruct model answers a user turn; given raw text it may end its turn at once
        ids = build_chat_prompt(tok, [{"role": "user", "content": args.prompt}], system=args.system,
                                max_prompt_tokens=max(1, model.config.block_size - cfg.max_new_tokens))
    stream = stream_generate(model, tok, ids, cfg)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        _print_stats(stream.stats)
    return 0


def run_chat(args: ChatArgs) -> int:
    args.generation_config()
    model, tok = load(args)
    session = ChatSession(model, tok, system=args.system, config=args.generation_config(chat_defaults(model, tok).config))
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {args.model} ({args.dtype}). /reset clears the history, /exit quits.", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            print("(history cleared)", file=sys.stderr, flush=True)
            continue
        stop = threading.Event()
        if interactive:
            print("bot> ", end="", file=sys.stderr, flush=True)
        try:
            for piece in session.stream(text, stop_event=stop):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the chat
            stop.set()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.stats or interactive:
            _print_stats(session.last_stats)
    return 0


# ---------------------------------------------------------------------------------------------------------------
def _add_sampling(p: argparse.ArgumentParser) -> None:
    d = SamplingArgs()
    p.add_argument("--model", default=d.model, help="model name, checkpoint folder, HF folder or .gguf file")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the model's own)")
    p.add_argument("--top-k", type=int, default=None, help="0 = off (default: the model's own)")
    p.add_argument("--top-p", type=float, default=None, help="1 = off (default: the model's own)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="1 = off (default: the model's own)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", default=d.dtype, choices=MODES, help="inference precision")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--system", default=None, help="system prompt (default: the one the model's chat template uses)")
    p.add_argument("--stats", action="store_true", help="print tokens/s and time to first token on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm_core", description="Generate text or chat with a model.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="answer a prompt (streamed to stdout)")
    _add_sampling(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--raw", action="store_true",
                   help="continue the prompt as plain text (default for models with a chat template: answer it "
                        "as one user turn)")
    c = sub.add_parser("chat", help="interactive chat in the terminal (reads stdin)")
    _add_sampling(c)
    return parser


def parse_args(argv: list[str] | None = None) -> GenerateArgs | ChatArgs:
    ns = vars(build_parser().parse_args(argv))
    cls = GenerateArgs if ns.pop("command") == "generate" else ChatArgs
    return cls(**{f.name: ns[f.name] for f in fields(cls) if f.name in ns})


def main(args: GenerateArgs | ChatArgs) -> int:
    try:
        if isinstance(args, GenerateArgs):
            return run_generate(args)
        return run_chat(args)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(parse_args()))
