"""Command line: ``python -m llm_core generate --prompt "..."`` and ``python -m llm_core chat``.

    python -m llm_core generate --model smollm2-135m-instruct --prompt "Once upon a time" --temperature 0
    python -m llm_core generate --prompt "What is the capital of France?" --chat --temperature 0
    python -m llm_core chat --dtype int8          # /reset clears the history, /exit (or Ctrl-D) quits

``--model`` takes a model name, one of our checkpoint folders, a Hugging Face folder or a .gguf file.
Errors in the input (unknown model, bad settings) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass, field, fields

import torch

from llm_core.chat import ChatSession, build_chat_prompt
from llm_core.generate import GenerationConfig, GenerationStats, stream_generate
from llm_core.hub import DEFAULT_MODEL
from llm_core.quantize import MODES, parse_mode, quantize_model


@dataclass
class SamplingArgs:
    model: str = DEFAULT_MODEL
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    dtype: str = "fp32"
    threads: int | None = None
    system: str | None = None
    stats: bool = False  # print tokens/s and time to first token on stderr

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                                top_p=self.top_p, repetition_penalty=self.repetition_penalty, stop=list(self.stop),
                                seed=self.seed)


@dataclass
class GenerateArgs(SamplingArgs):
    prompt: str = ""
    chat: bool = False  # wrap the prompt in the model's chat template as one user turn


@dataclass
class ChatArgs(SamplingArgs):
    pass


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit status 2."""


def load(args: SamplingArgs):  # noqa: ANN201 - (GPT, Tokenizer)
    from llm_core.hub import load_model

    mode = parse_mode(args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, tok = load_model(args.model)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(str(e).strip("'\"")) from e
    except OSError as e:
        raise UsageError(f"cannot load model {args.model!r}: {e}") from e
    return quantize_model(model, mode), tok


def _print_stats(st: GenerationStats) -> None:
    print(f"[{st.summary()} · stop: {st.stop_reason}]", file=sys.stderr, flush=True)


def run_generate(args: GenerateArgs) -> int:
    if not args.prompt:
        raise UsageError("--prompt is empty: give the text to continue")
    cfg = args.generation_config()
    cfg.validate()
    model, tok = load(args)
    if args.chat:
        ids = build_chat_prompt(tok, [{"role": "user", "content": args.prompt}], system=args.system,
                                max_prompt_tokens=max(1, model.config.block_size - cfg.max_new_tokens))
    else:
        ids = tok.encode(args.prompt, allowed_special="all")
    stream = stream_generate(model, tok, ids, cfg)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        _print_stats(stream.stats)
    return 0


def run_chat(args: ChatArgs) -> int:
    cfg = args.generation_config()
    cfg.validate()
    model, tok = load(args)
    session = ChatSession(model, tok, system=args.system, config=cfg)
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
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="0 = off")
    p.add_argument("--top-p", type=float, default=d.top_p, help="1 = off")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty, help="1 = off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", default=d.dtype, choices=MODES, help="inference precision")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--system", default=None, help="system prompt for chat")
    p.add_argument("--stats", action="store_true", help="print tokens/s and time to first token on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm_core", description="Generate text or chat with a model.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete a prompt (streamed to stdout)")
    _add_sampling(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
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
