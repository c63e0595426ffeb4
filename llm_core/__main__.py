"""Command line: ``python -m llm_core generate --prompt "..."`` and ``python -m llm_core chat``.

    python -m llm_core generate --model smollm2-135m-instruct --prompt "What is the capital of France?" --temperature 0
    python -m llm_core generate --prompt "Once upon a time" --raw --temperature 0   # plain completion
    python -m llm_core chat --dtype int8          # /reset clears the history, /exit (or Ctrl-D) quits
    python -m llm_core chat                       # --dtype auto: the fastest precision within 2% of fp32's perplexity

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
from typing import TYPE_CHECKING

import torch

from llm_core.generation.chat import ChatSession, build_chat_prompt, chat_defaults
from llm_core.generation.generate import GenerationConfig, GenerationStats, stream_generate
from llm_core.generation.generation_config import is_default_name
from llm_core.generation.precision_choice import PrecisionChoice, pick_precision
from llm_core.generation.quantize import MODES, load_quantized, parse_mode
from llm_core.weights.hub import DEFAULT_MODEL

if TYPE_CHECKING:
    from api import ServeArgs


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
    precision: PrecisionChoice | None = field(default=None, init=False, repr=False)  # set by load()

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
    dtype: str = "auto"  # the bundled model: the fastest precision within 2% of fp32's perplexity (measured once)


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit status 2."""


def resolve_precision(args: SamplingArgs) -> PrecisionChoice:
    """``--dtype`` as given, or for "auto": the bundled model's measured choice (``llm_core.generation.precision_choice``,
    cached per model file and machine; ``$STUDIO_PRECISION`` wins), any other model fp32 (not measured)."""
    if str(args.dtype).lower() != "auto":
        return PrecisionChoice(parse_mode(args.dtype), "explicit")
    if not is_default_name(args.model):
        return PrecisionChoice("fp32", "not measured")
    try:
        return pick_precision(args.model, progress=lambda what: print(what, file=sys.stderr, flush=True))
    except (OSError, ValueError, RuntimeError) as e:  # e.g. the bundled weights missing: load() says it in words
        print(f"warning: could not measure the precisions ({e}); using fp32", file=sys.stderr)
        return PrecisionChoice("fp32", "not measured")


def load(args: SamplingArgs):  # noqa: ANN201 - (GPT, Tokenizer)
    """The model in ``--dtype``, built straight in that precision (an int8 model never holds its fp32 weights).
    "auto" resolves through :func:`resolve_precision`; ``args.precision`` then says what was chosen and why."""
    if args.threads:
        torch.set_num_threads(args.threads)
    choice = resolve_precision(args)
    args.precision = choice
    mode = choice.mode
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
        ids = tok.encode_prompt(args.prompt, allowed_special="all")  # with BOS where the model wants it (Gemma)
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
    assert args.precision is not None
    print(f"precision: {args.precision.label()}", file=sys.stderr, flush=True)
    session = ChatSession(model, tok, system=args.system, config=args.generation_config(chat_defaults(model, tok).config))
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {args.model} ({args.precision.mode}). /reset clears the history, /exit quits.", file=sys.stderr)
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


@dataclass
class ExportArgs:
    """``python -m llm_core export MODEL --format gguf|hf --outtype f32|f16|q8_0|q4_0 [--adapter DIR] [--out PATH]``."""

    model: str = DEFAULT_MODEL
    format: str = "gguf"
    outtype: str = "f32"
    adapter: str | None = None  # a LoRA adapter folder, merged into MODEL in the same command
    out: str | None = None  # None: data_dir()/exports/<model>-<outtype>.gguf (hf: .../<model>-hf)
    modelfile: bool = True  # write an Ollama <stem>.Modelfile beside the GGUF


def _export_main(args: ExportArgs) -> int:
    """Export, then print one JSON line (path, bytes, outtype, modelfile); bad input: one line, status 2."""
    import json

    from tqdm import tqdm

    from llm_core.weights.export import default_out_path, export_gguf, export_hf_folder

    try:
        if args.format == "hf":
            out = args.out or str(default_out_path(args.model, args.adapter, "hf").with_suffix(""))
            result = export_hf_folder(args.model, out, adapter=args.adapter)
        else:
            with tqdm(desc="export", unit="tensor", file=sys.stderr, disable=None) as bar:
                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                result = export_gguf(args.model, args.out, args.outtype, adapter=args.adapter,
                                     modelfile=args.modelfile, progress=progress)
    except (ValueError, OSError) as e:  # bad model/outtype/adapter, char-level model, unwritable --out
        print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    d = result.to_dict()
    print(json.dumps({k: d[k] for k in ("path", "bytes", "format", "outtype", "modelfile", "arch")}))
    return 0


@dataclass
class PerplexityArgs:
    """``python -m llm_core perplexity MODEL --text FILE [--block N] [--stride N] [--json]``."""

    model: str = DEFAULT_MODEL
    text: str = ""  # a text file (non-UTF-8 files are decoded as the RAG loaders do, with a warning)
    block: int | None = None  # window length (default: the model's context, at most 1,024)
    stride: int | None = None  # window step (default: block // 2)
    dtype: str = "fp32"
    threads: int | None = None
    json: bool = False


@dataclass
class MemoryArgs:
    """``python -m llm_core memory MODEL [--measure] [--json]``: MODEL may also be a ModelConfig preset name."""

    model: str = DEFAULT_MODEL
    batch: int = 1
    seq: int | None = None  # training sequence length (default: the context, at most 512)
    rank: int = 16
    measure: bool = False  # run the four training modes here, each in a fresh process
    steps: int = 3
    threads: int = 2
    default_heap: bool = False  # also measure the runs without checkpointing on glibc's default heap
    json: bool = False


def _perplexity_main(args: PerplexityArgs) -> int:
    """Perplexity and bits per byte of MODEL on a file; one JSON line with --json."""
    import json
    from pathlib import Path

    from tqdm import tqdm

    from llm_core.labs.perplexity import perplexity, text_from_bytes

    path = Path(args.text)
    if not path.is_file():
        raise UsageError(f"--text {args.text!r}: no such file")
    text, notes = text_from_bytes(path.read_bytes(), path.name)  # as the RAG loaders decode, with warnings
    model, tok = load(args)  # type: ignore[arg-type]  # (model, dtype, threads: the fields load() reads)
    with tqdm(desc="perplexity", unit="tok", file=sys.stderr, disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        r = perplexity(model, tok, text, block=args.block, stride=args.stride, progress=progress)
    r.warnings = notes + r.warnings
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    d = {"model": args.model, "text": path.name, "dtype": args.dtype, **r.to_dict()}
    if args.json:
        print(json.dumps(d))
    else:
        print(f"perplexity {r.perplexity:.3f} · {r.bits_per_byte:.4f} bits per byte · nll {r.nll_per_token:.4f} "
              f"nats/token · {r.tokens:,} tokens · {r.n_bytes:,} bytes · window {r.block}, stride {r.stride}")
    return 0


def _memory_main(args: MemoryArgs) -> int:
    """Memory estimates for MODEL's config (and, with --measure, the peaks measured here) as JSON or a table."""
    import json

    from llm_core.labs.memory import memory_report, report_rows
    from llm_core.model.config import PRESETS, ModelConfig

    if args.model in PRESETS:
        cfg = ModelConfig.from_preset(args.model)
    else:
        from llm_core.weights.hub import load_model

        try:
            cfg = load_model(args.model)[0].config  # the weights are only mapped, and dropped at once
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise UsageError(str(e).strip("'\"")) from e
    if args.measure:
        print("measuring 4 training runs, each in a fresh process ...", file=sys.stderr, flush=True)
    rep = memory_report(cfg, batch=args.batch, seq=args.seq, rank=args.rank, measure=args.measure, steps=args.steps,
                        threads=args.threads, default_heap=args.default_heap,
                        progress=lambda d, n: print(f"  {d}/{n} done", file=sys.stderr, flush=True))
    rep["model"] = args.model
    if args.json:
        print(json.dumps(rep))
    else:
        for what, est, measured, note in report_rows(rep):
            print(f"{what:<62} {est:>12} {measured:>12}  {note}")
    return 0


def _labs_main(args: PerplexityArgs | MemoryArgs) -> int:
    """The perplexity and memory labs: bad input (a missing file, too short a text) is one line, status 2."""
    try:
        return _perplexity_main(args) if isinstance(args, PerplexityArgs) else _memory_main(args)
    except (UsageError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------------------------------------------
def _add_sampling(p: argparse.ArgumentParser, d: SamplingArgs | None = None) -> None:
    d = d or SamplingArgs()
    p.add_argument("--model", default=d.model, help="model name, checkpoint folder, HF folder or .gguf file")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the model's own)")
    p.add_argument("--top-k", type=int, default=None, help="0 = off (default: the model's own)")
    p.add_argument("--top-p", type=float, default=None, help="1 = off (default: the model's own)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="1 = off (default: the model's own)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", default=d.dtype, choices=(*MODES, "auto"),
                   help="inference precision (auto: the fastest within 2%% of fp32's perplexity, measured once "
                        f"for the bundled model; default {d.dtype})")
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
    _add_sampling(c, ChatArgs())
    ex = sub.add_parser("export", help="write a GGUF (+ Ollama Modelfile) or a Hugging Face folder; prints JSON")
    ex.add_argument("model", help="model name, checkpoint folder, HF folder or .gguf file (the adapter's base)")
    ex.add_argument("--format", default="gguf", choices=("gguf", "hf"))
    ex.add_argument("--outtype", default="f32", choices=("f32", "f16", "q8_0", "q4_0"), help="GGUF tensor type")
    ex.add_argument("--adapter", default=None, help="LoRA adapter folder to merge into MODEL first")
    ex.add_argument("--out", default=None, help="output .gguf file (hf: folder); default under data/exports/")
    ex.add_argument("--no-modelfile", dest="modelfile", action="store_false", help="skip the Ollama Modelfile")
    sv = sub.add_parser("serve", help="the OpenAI-compatible API alone (no UI) at http://HOST:PORT/v1")
    sv.add_argument("--host", default="127.0.0.1", help="interface (beyond loopback, STUDIO_API_KEY is required)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--model", default=DEFAULT_MODEL, help="default model: a name or a checkpoint folder")
    sv.add_argument("--llm-url", default=None, help="an OpenAI-compatible server answering for --llm-model "
                    "(default $STUDIO_LLM_URL), e.g. http://127.0.0.1:8080/v1")
    sv.add_argument("--llm-model", default=None, help="the model that server runs (default $STUDIO_LLM_MODEL)")
    sv.add_argument("--llm-key", default=None, help="its API key (default $STUDIO_LLM_KEY, which keeps it out of ps)")
    pp = sub.add_parser("perplexity", help="perplexity and bits per byte of MODEL on a text file; prints JSON")
    pp.add_argument("model", help="model name, checkpoint folder, HF folder or .gguf file")
    pp.add_argument("--text", required=True, help="text file (non-UTF-8 is decoded as the RAG loaders do)")
    pp.add_argument("--block", type=int, default=None, help="window length (default: context, at most 1024)")
    pp.add_argument("--stride", type=int, default=None, help="window step (default: block // 2)")
    pp.add_argument("--dtype", default="fp32", choices=MODES)
    pp.add_argument("--threads", type=int, default=None)
    pp.add_argument("--json", action="store_true", help="one JSON line")
    me = sub.add_parser("memory", help="where MODEL's memory goes: weights, KV cache, training; prints JSON")
    me.add_argument("model", help="model name, checkpoint folder, HF folder, .gguf file or a config preset")
    me.add_argument("--batch", type=int, default=1)
    me.add_argument("--seq", type=int, default=None, help="training tokens per sequence (default: context, <= 512)")
    me.add_argument("--rank", type=int, default=16, help="LoRA rank")
    me.add_argument("--measure", action="store_true", help="measure the 4 training modes here (fresh processes)")
    me.add_argument("--steps", type=int, default=3, help="training steps per measured run")
    me.add_argument("--threads", type=int, default=2)
    me.add_argument("--default-heap", action="store_true", help="also measure on glibc's default heap")
    me.add_argument("--json", action="store_true", help="one JSON line")
    return parser


def parse_args(argv: list[str] | None = None) -> GenerateArgs | ChatArgs | ServeArgs:
    ns = vars(build_parser().parse_args(argv))
    command = ns.pop("command")
    if command in ("perplexity", "memory"):
        lab = PerplexityArgs if command == "perplexity" else MemoryArgs
        return lab(**{f.name: ns[f.name] for f in fields(lab)})  # type: ignore[return-value]
    if command == "export":
        return ExportArgs(**{f.name: ns[f.name] for f in fields(ExportArgs)})  # type: ignore[return-value]
    if command == "serve":
        from api import ServeArgs

        return ServeArgs(**{f.name: ns[f.name] for f in fields(ServeArgs)})
    cls = GenerateArgs if command == "generate" else ChatArgs
    return cls(**{f.name: ns[f.name] for f in fields(cls) if f.name in ns})


def main(args: GenerateArgs | ChatArgs | ServeArgs) -> int:
    if isinstance(args, (PerplexityArgs, MemoryArgs)):
        return _labs_main(args)
    if isinstance(args, ExportArgs):
        return _export_main(args)
    if type(args).__name__ == "ServeArgs":  # the API lives in the `api` package (it also serves documents)
        from api import serve_main

        return serve_main(args)
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
