"""``python -m llm_core.tokenizer compare --text FILE --vocab-size N [--bpb-seconds S] [--json]``

Trains char, BPE, WordPiece and Unigram tokenizers on FILE and compares them (and tiktoken's cl100k_base / gpt2
when their files are cached): bytes per token, training time, how each splits a sample sentence, what each does
with unseen characters. ``--bpb-seconds S`` also trains the same tiny GPT for S seconds with each trained
tokenizer and reports held-out bits per byte.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from .compare import KINDS, SAMPLE, compare_tokenizers, format_table


@dataclass
class CompareArgs:
    text: str  # a text file (any encoding the RAG loaders read; a guess is a warning)
    vocab_size: int = 1000
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    sample: str = SAMPLE
    bpb_seconds: float = 0.0  # > 0: also run the bits-per-byte experiment, this many seconds per tokenizer
    json: bool = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm_core.tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare the tokenizer zoo on a text file")
    c.add_argument("--text", required=True, help="text file to train and measure on")
    c.add_argument("--vocab-size", type=int, default=1000)
    c.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    c.add_argument("--sample", default=SAMPLE, help="sentence whose split is shown")
    c.add_argument("--bpb-seconds", type=float, default=0.0,
                   help="also train the same tiny GPT this many seconds per tokenizer; report bits per byte")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def parse_args(argv: list[str] | None = None) -> CompareArgs:
    ns = build_parser().parse_args(argv)
    kinds = [k.strip() for k in ns.kinds.split(",") if k.strip()]
    return CompareArgs(text=ns.text, vocab_size=ns.vocab_size, kinds=kinds, sample=ns.sample,
                       bpb_seconds=ns.bpb_seconds, json=ns.json)


def main(args: CompareArgs) -> int:
    from llm_core.textfile import read_text_file

    try:
        text, warnings = read_text_file(args.text)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        result = compare_tokenizers(text, args.vocab_size, args.kinds, sample=args.sample,
                                    progress=None if args.json else (lambda m: print(m, file=sys.stderr)))
        result.warnings = warnings + result.warnings
        out = result.to_dict()
        if args.bpb_seconds > 0:
            from .bpb import bpb_experiment

            trained = [k for k in args.kinds if k not in ("cl100k_base", "gpt2")]
            rows = bpb_experiment(text, args.vocab_size, args.bpb_seconds, trained,
                                  progress=None if args.json else (lambda m: print(m, file=sys.stderr)))
            out["bpb"] = [r.to_dict() for r in rows]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(format_table(result))
    print(f"\nSample: {args.sample}")
    for r in result.rows:
        if not r.error:
            print(f"  {r.name:>12}: {' | '.join(r.sample_pieces)}")
    for r in out.get("bpb", []):
        print(f"bits per byte with {r['name']:>10}: {r['bits_per_byte']:.3f} ({r['steps']} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
