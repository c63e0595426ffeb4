"""CLI: ``python -m llm_core.labs.scaling --budget-s 210 --json`` trains the ladder and prints the points, ``alpha`` (with
its error) and the compute-optimal size. Ctrl-C stops after the current model's step and fits what finished."""

from __future__ import annotations

import argparse
import json
import sys

from llm_core.labs.scaling.ladder import LADDER, LadderEvent, ScalingArgs, ScalingResult, check_budget, run_ladder


def parse_args(argv: list[str] | None = None) -> ScalingArgs:
    d = ScalingArgs()
    p = argparse.ArgumentParser(prog="python -m llm_core.labs.scaling",
                                description="Train a ladder of tiny GPTs for the same time and fit the scaling laws.")
    p.add_argument("--budget-s", type=float, default=d.budget_s,
                   help=f"training seconds for the whole ladder, split equally (default {d.budget_s:g})")
    p.add_argument("--models", type=int, default=d.models, choices=range(2, len(LADDER) + 1),
                   help=f"how many sizes, from {LADDER[0].name} to {LADDER[-1].name} (default {d.models})")
    p.add_argument("--data", nargs="+", default=[d.data], help="'shakespeare' (built-in) or text files/folders")
    p.add_argument("--tokenizer", default=d.tokenizer, help="char | bpe:N (default char)")
    p.add_argument("--evals", type=int, default=d.evals, help="validation losses during each model's share")
    p.add_argument("--out", dest="out_dir", default="", help="keep each model's checkpoint under this folder")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | mps")
    p.add_argument("--threads", dest="num_threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ns = p.parse_args(argv)
    data = ns.data[0] if len(ns.data) == 1 else ns.data
    return ScalingArgs(budget_s=ns.budget_s, models=ns.models, data=data, tokenizer=ns.tokenizer, evals=ns.evals,
                       out_dir=ns.out_dir, device=ns.device, num_threads=ns.num_threads, seed=ns.seed,
                       json=ns.json)


def summary(res: ScalingResult) -> str:
    """The result in words, for a terminal."""
    lines = [f"{'model':>6} {'params':>10} {'tokens':>11} {'FLOPs':>9} {'tok/param':>9} {'val loss':>8}"]
    lines += [f"{p.name:>6} {p.params:>10,} {p.tokens:>11,} {p.flops:>9.2e} {p.tokens_per_param:>9.2f} "
              f"{p.val_loss:>8.3f}" for p in res.points]
    if res.law:
        w = res.law
        lines.append(f"L(N, D) = {w.E:.3f} + {w.A:.3g}·N^-{w.alpha:.3f} + {w.B:.3g}·D^-{w.beta:.3f}   "
                     f"alpha = {w.alpha:.3f} ± {w.alpha_err:.3f}, beta = {w.beta:.3f} ± {w.beta_err:.3f} "
                     f"(R² {w.r2:.3f})")
    if res.fit_flops:
        f = res.fit_flops
        lines.append(f"L(C) = {f.a:.3g} * C^-{f.alpha:.3f} + {f.c:.3f} on the compute frontier "
                     f"(exponent ± {f.alpha_err:.3f})")
    if res.isoflop and res.optimal is not res.isoflop:
        lines.append(f"best model at this budget: ~{res.isoflop.params / 1e6:.2f}M ({res.isoflop.method})")
    if res.optimal:
        o = res.optimal
        lines.append(f"compute-optimal for {o.flops:.2e} FLOPs: ~{o.params / 1e6:.2f}M parameters ({o.method}), "
                     f"{o.tokens_per_param:.1f} tokens/parameter (Chinchilla: ~{o.chinchilla_tokens_per_param:.0f}, "
                     f"which would pick ~{o.chinchilla_params / 1e6:.3f}M)")
    lines += [f"note: {n}" for n in res.notes]
    return "\n".join(lines)


def main(args: ScalingArgs) -> ScalingResult:
    """Run the ladder with a progress bar (seconds of the budget); the first Ctrl-C stops, a second aborts."""
    from tqdm.auto import tqdm

    from llm_core.training.train import ctrl_c_stops

    check_budget(args)  # before any data is prepared
    bar = tqdm(total=round(args.budget_s), unit="s", dynamic_ncols=True, file=sys.stderr, desc="ladder")

    def progress(ev: LadderEvent) -> None:
        bar.update(max(0, round(ev.fraction * args.budget_s) - bar.n))
        if ev.loss is not None:
            bar.set_postfix(model=ev.name, step=ev.step, loss=f"{ev.loss:.3f}", refresh=False)
        if ev.message and not ev.message.startswith(("preparing", "training ")):
            tqdm.write(ev.message, file=sys.stderr)

    with ctrl_c_stops("stopping the ladder after this step") as stop:
        try:
            res = run_ladder(args, progress=progress, stop_event=stop)
        finally:
            bar.close()
    print(json.dumps(res.to_dict()) if args.json else summary(res))
    return res


if __name__ == "__main__":
    _args = parse_args(sys.argv[1:])
    try:
        main(_args)
    except (ValueError, FileNotFoundError) as _e:
        print(f"error: {_e}", file=sys.stderr)
        sys.exit(2)
