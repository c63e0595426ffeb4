"""Do our chat defaults keep simple facts right? A factual smoke set, ours vs transformers on the same weights.

The default model (the bundled SmolLM2-135M-Instruct GGUF) answers the 20 questions of
``llm_core/generation/chat_facts.json`` in this process, with each configuration:

- ``ours``: the Chat tab's and the CLI's defaults, i.e. the model's own (``llm_core.generation.chat.chat_defaults``): the system
  prompt its chat template inserts and its published sampling settings (temperature 0.2, top-p 0.9);
- ``hf``: transformers' ``generate`` with the HF chat template on the same GGUF weights and the same published
  settings (the model card's ``do_sample=True, temperature=0.2, top_p=0.9``), its own sampler;
- ``ours_greedy`` / ``hf_greedy``: both greedy (``greedy_same_replies`` counts the questions where the two engines
  wrote the very same reply: they should agree on all);
- ``old_defaults`` (sampled) and ``old_defaults_greedy``: the generic "You are a helpful, concise assistant." with
  temperature 0.7, top-p 0.9, repetition penalty 1.1, which the app used before.

Sampled configurations are scored as the mean over ``--repeats`` seeds (seed 1000 * repeat + question).
An answer is right when one expected answer appears in it as a whole word, case-insensitively.

    python bench/chat_defaults.py --json [--repeats 3] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from llm_core.generation.chat import build_chat_prompt, chat_defaults  # noqa: E402
from llm_core.generation.facts import is_right, load_facts  # noqa: E402
from llm_core.generation.generate import GenerationConfig, generate  # noqa: E402
from llm_core.weights.hub import bundled_gguf, load_model  # noqa: E402

OLD_SYSTEM = "You are a helpful, concise assistant."


def ask_ours(model, tok, question: str, system: str | None, cfg: GenerationConfig) -> str:  # noqa: ANN001
    ids = build_chat_prompt(tok, [{"role": "user", "content": question}], system=system)
    return tok.decode(generate(model, tok, ids, cfg))


def ask_hf(hf, hf_tok, question: str, cfg: GenerationConfig, seed: int) -> str:  # noqa: ANN001
    """transformers' generate, HF chat template, the sampling settings of ``cfg`` (its own sampler)."""
    ids = hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)["input_ids"]
    sampling = dict(do_sample=False) if cfg.temperature == 0 else dict(
        do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.max_new_tokens,
                          pad_token_id=hf_tok.eos_token_id, **sampling)
    return hf_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def score(ask, facts: list[dict], cfg: GenerationConfig, repeats: int) -> tuple[float, list[str]]:  # noqa: ANN001
    """Mean number right over ``repeats`` seeds (one run when greedy), and the first run's replies.
    ``ask(question, cfg, seed)`` answers one question."""
    runs = 1 if cfg.temperature == 0 else max(1, repeats)
    total, replies = 0, []
    for r in range(runs):
        for k, f in enumerate(facts):
            reply = ask(f["q"], cfg, 1000 * r + k)
            total += is_right(reply, f["answers"])
            if r == 0:
                replies.append(reply)
    return total / runs, replies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="seeds per question for our sampled defaults (mean)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers reference")
    p.add_argument("--show", action="store_true", help="print every reply on stderr")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    facts = load_facts()
    model, tok = load_model("smollm2-135m-instruct")
    d = chat_defaults(model, tok)
    ours = dataclasses.replace(d.config, max_new_tokens=args.max_new_tokens)
    greedy = dataclasses.replace(ours, temperature=0.0)
    old = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.9, repetition_penalty=1.1)

    def ask_ours_with(system: str | None):  # noqa: ANN202
        return lambda q, cfg, seed: ask_ours(model, tok, q, system, dataclasses.replace(cfg, seed=seed))

    runs = {"ours": (ask_ours_with(d.system), ours), "ours_greedy": (ask_ours_with(d.system), greedy),
            "old_defaults": (ask_ours_with(OLD_SYSTEM), old), "old_defaults_greedy": (ask_ours_with(OLD_SYSTEM), greedy)}
    if not args.no_hf:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = bundled_gguf()
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
        hf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        runs["hf"] = (lambda q, cfg, seed: ask_hf(hf, hf_tok, q, cfg, seed), ours)
        runs["hf_greedy"] = (lambda q, cfg, seed: ask_hf(hf, hf_tok, q, cfg, seed), greedy)
    out: dict = {"n": len(facts), "repeats": args.repeats, "ours_settings": {"system": d.system, **d.config.to_hf()}}
    shown: dict[str, list[str]] = {}
    for name, (ask, cfg) in runs.items():
        out[f"{name}_correct"], shown[name] = score(ask, facts, cfg, args.repeats)
        print(f"{name}: {out[f'{name}_correct']} of {len(facts)}", file=sys.stderr, flush=True)
    if "hf" in shown:
        out["ours_minus_hf"] = round(out["ours_correct"] - out["hf_correct"], 3)
        out["greedy_same_replies"] = sum(a.strip() == b.strip() for a, b in zip(shown["ours_greedy"],
                                                                                shown["hf_greedy"]))
    if args.show:
        for k, f in enumerate(facts):
            print(f"\n{f['q']}", file=sys.stderr)
            for name, replies in shown.items():
                print(f"  {name}: {replies[k][:100]!r}", file=sys.stderr)
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()), flush=True)


if __name__ == "__main__":
    main()
