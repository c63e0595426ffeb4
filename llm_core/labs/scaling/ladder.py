"""The scaling ladder: a few tiny GPTs of growing size, each trained by the project's one pretraining entry point
(``llm_core.training.trainer.train``) on the same text for the same share of a wall-clock budget.

Each model yields a point (parameters N, tokens D, training FLOPs ~ 6·N·D, validation loss) and a learning curve;
``llm_core.labs.scaling.fit`` turns them into the fitted exponent and the compute-optimal size.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_core.labs.scaling.fit import (
    ComputeOptimal,
    JointLaw,
    PowerLaw,
    compute_optimal,
    fit_joint,
    fit_power_law,
    frontier,
)

RECIPE = "pretrain-tab"  # the Pretrain tab's recipe (llm_core.training.trainer.PRETRAIN_PRESETS): same optimiser, same data


@dataclass(frozen=True)
class Rung:
    """One model size on the ladder (GPT-2 family of the recipe's ``nano`` preset, context 64)."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int

    def approx_params(self, vocab_size: int = 65, block_size: int = 64) -> int:
        """12·L·d² for the blocks (+ biases and norms) plus the tied embeddings: the count before building it."""
        d = self.n_embd
        per_block = 12 * d * d + 13 * d  # qkv+o (4d²) + MLP (8d²), their biases and two LayerNorms
        return self.n_layer * per_block + (vocab_size + block_size) * d + 2 * d


# about 0.1M to 5M parameters with a character vocabulary, ~2-2.5x apart (their head sizes 16..48)
LADDER: tuple[Rung, ...] = (
    Rung("0.1M", 2, 4, 64),
    Rung("0.3M", 3, 4, 96),
    Rung("0.8M", 4, 4, 128),
    Rung("1.8M", 4, 6, 192),
    Rung("3.1M", 5, 8, 224),
    Rung("4.8M", 6, 8, 256),
)
MIN_RUNG_S = 5.0  # below this a model takes too few steps to say anything about its size


@dataclass
class ScalingArgs:
    """Settings of a ladder run (``python -m llm_core.labs.scaling`` has a flag for each)."""

    budget_s: float = 210.0  # training seconds for the whole ladder, split equally between the models
    models: int = 6  # how many of LADDER's sizes, spread from the smallest to the largest (4-6)
    data: str | list[str] = "shakespeare"  # "shakespeare" (built-in) or the user's text files
    tokenizer: str = "char"
    evals: int = 4  # validation losses during each model's share (the loss-vs-FLOPs curves), plus one at the end
    out_dir: str = ""  # keep each model's checkpoint under here ("" = a temporary folder, removed afterwards)
    device: str = "auto"
    num_threads: int | None = None  # CPU threads (None: torch's default); 1 is faster on a machine others load
    seed: int = 1337
    json: bool = False
    min_rung_s: float = MIN_RUNG_S
    ladder: tuple[Rung, ...] | None = None  # explicit sizes (tests); None = ``models`` of LADDER

    def rungs(self) -> tuple[Rung, ...]:
        if self.ladder is not None:
            return tuple(self.ladder)
        if not 2 <= self.models <= len(LADDER):
            raise ValueError(f"models must be 2 to {len(LADDER)} (the ladder has {len(LADDER)} sizes), "
                             f"got {self.models}")
        step = (len(LADDER) - 1) / (self.models - 1)
        return tuple(LADDER[round(i * step)] for i in range(self.models))

    def share_s(self) -> float:
        return self.budget_s / len(self.rungs())


def check_budget(args: ScalingArgs) -> None:
    """Refuse, before anything starts, a budget whose equal share is too short for the ladder's models."""
    n = len(args.rungs())
    if not math.isfinite(args.budget_s) or args.budget_s <= 0:
        raise ValueError(f"the budget must be a positive number of seconds, got {args.budget_s}")
    minimum = n * args.min_rung_s
    if args.budget_s < minimum:
        smallest = min(args.rungs(), key=lambda r: r.approx_params())
        raise ValueError(f"a budget of {args.budget_s:g} s is too small: it gives each of the {n} models "
                         f"{args.budget_s / n:.1f} s, and even the smallest ({smallest.name}) needs at least "
                         f"{args.min_rung_s:g} s to train. Give at least {minimum:g} s (or fewer models).")


@dataclass
class LadderPoint:
    """One trained model: its size, what it consumed and the loss it reached."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    params: int  # every parameter once (tied embeddings once)
    steps: int
    tokens: int  # training tokens seen
    flops: float  # ~ 6 * params * tokens (forward 2N + backward 4N per token; attention's T-term left out)
    val_loss: float
    train_s: float
    tokens_per_param: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (training FLOPs, validation loss)


@dataclass
class LadderEvent:
    """Progress for a UI or a progress bar: which model, how far the whole ladder is, the latest losses."""

    rung: int  # 0-based
    rungs: int
    name: str
    fraction: float  # of the whole ladder's training budget
    step: int = 0
    loss: float | None = None
    val_loss: float | None = None
    message: str = ""
    point: LadderPoint | None = None  # set once, when this model has finished


@dataclass
class ScalingResult:
    budget_s: float
    points: list[LadderPoint]
    law: JointLaw | None  # L(N, D) = E + A N^-alpha + B D^-beta over every validation loss of the ladder
    fit_flops: PowerLaw | None  # L(C) = a C^-alpha + c over the compute frontier
    optimal: ComputeOptimal | None  # from the law when it fitted, else the best model of the IsoFLOP profile
    isoflop: ComputeOptimal | None  # the IsoFLOP profile's own minimum (parabola through the best three models)
    stopped: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def budget_flops(self) -> float | None:
        return self.isoflop.flops if self.isoflop else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON the CLI prints: points, alpha (with its error), the compute-optimal size."""
        law = self.law
        return dict(budget_s=self.budget_s, points=[asdict(p) for p in self.points],
                    alpha=law.alpha if law else None, alpha_err=law.alpha_err if law else None,
                    law=law.to_dict() if law else None,
                    fit_flops=self.fit_flops.to_dict() if self.fit_flops else None,
                    compute_optimal=self.optimal.to_dict() if self.optimal else None,
                    isoflop_optimal=self.isoflop.to_dict() if self.isoflop else None,
                    stopped=self.stopped, notes=list(self.notes))


Progress = Callable[[LadderEvent], None]


def _params(model_config: dict[str, Any]) -> int:
    """The trained model's parameter count, from its config (built on the meta device: no memory, no init)."""
    import torch

    from llm_core.model.config import ModelConfig
    from llm_core.model.gpt import GPT

    with torch.device("meta"):
        return GPT(ModelConfig.from_dict(model_config)).num_params()


def train_rung(args: ScalingArgs, rung: Rung, out_dir: Path, on_event: Callable[[Any], None] | None = None,
               stop_event: threading.Event | None = None) -> tuple[Any, list[tuple[int, float]]]:
    """Train one size for its share of the budget through the trainer; returns (TrainResult, [(tokens, val)])."""
    from llm_core.training.train_events import EvalEvent, StepEvent
    from llm_core.training.trainer import budget_recipe, train

    share = args.share_s()
    cfg = budget_recipe(RECIPE, None, share, evals=args.evals, data=args.data, tokenizer=args.tokenizer,
                        out_dir=str(out_dir), n_layer=rung.n_layer, n_head=rung.n_head, n_embd=rung.n_embd,
                        eval_every_s=share / args.evals if args.evals else None, eval_at_start=False,
                        sample_at_eval=False, sample_tokens=0, device=args.device, seed=args.seed,
                        num_threads=args.num_threads)
    tokens = [0]
    curve: list[tuple[int, float]] = []

    def cb(ev: Any) -> None:
        if isinstance(ev, StepEvent):
            tokens[0] = ev.tokens_seen
        elif isinstance(ev, EvalEvent):
            curve.append((tokens[0], ev.val_loss))
        if on_event is not None:
            on_event(ev)

    return train(cfg, callbacks=cb, stop_event=stop_event), curve


def _forwarder(progress: Progress | None, i: int, n: int, rung: Rung, share: float) -> Callable[[Any], None]:
    """The trainer's events for model ``i`` of ``n`` as LadderEvents; the fraction of the ladder only grows."""
    from llm_core.training.train_events import EvalEvent, StatusEvent, StepEvent

    last = [i / n]

    def emit(ev: Any) -> None:
        if progress is None:
            return
        base = dict(rung=i, rungs=n, name=rung.name)
        if isinstance(ev, StepEvent):  # finished models + this one's clock
            last[0] = (i + min(1.0, ev.elapsed_s / share)) / n
            progress(LadderEvent(**base, fraction=last[0], step=ev.step, loss=ev.loss))
        elif isinstance(ev, EvalEvent):
            progress(LadderEvent(**base, fraction=last[0], step=ev.step, val_loss=ev.val_loss))
        elif isinstance(ev, StatusEvent) and ev.total is None:
            progress(LadderEvent(**base, fraction=last[0], message=ev.message))

    return emit


def run_ladder(args: ScalingArgs, progress: Progress | None = None,
               stop_event: threading.Event | None = None) -> ScalingResult:
    """Train every size for an equal share of ``args.budget_s`` and fit the laws. ``stop_event`` ends the
    current model early; the models finished before it are kept (and fitted when there are enough)."""
    check_budget(args)
    rungs, share = args.rungs(), args.share_s()
    stop_event = stop_event or threading.Event()
    points: list[LadderPoint] = []
    stopped = False
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        root = Path(args.out_dir) if args.out_dir else Path(tmp)
        for i, rung in enumerate(rungs):
            emit = _forwarder(progress, i, len(rungs), rung, share)
            if progress is not None:
                progress(LadderEvent(i, len(rungs), rung.name, i / len(rungs),
                                     message=f"model {i + 1}/{len(rungs)}: {rung.name} ({rung.n_layer} layers × "
                                             f"{rung.n_embd} wide) for {share:.0f} s"))
            t0 = time.perf_counter()
            res, curve = train_rung(args, rung, root / f"{i}-{rung.name}", emit, stop_event)
            if res.stop_reason == "stopped" or res.val_loss is None:
                stopped = True
                break
            n = _params(res.model_config)
            pt = LadderPoint(rung.name, rung.n_layer, rung.n_head, rung.n_embd, params=n, steps=res.steps,
                             tokens=res.tokens_seen, flops=6.0 * n * res.tokens_seen, val_loss=res.val_loss,
                             train_s=res.train_s, tokens_per_param=res.tokens_seen / n,
                             curve=[(6.0 * n * t, v) for t, v in curve if t > 0])
            if not pt.curve or pt.curve[-1][0] < pt.flops:
                pt.curve.append((pt.flops, pt.val_loss))
            points.append(pt)
            if progress is not None:
                progress(LadderEvent(i, len(rungs), rung.name, (i + 1) / len(rungs), step=res.steps,
                                     val_loss=res.val_loss, point=pt,
                                     message=f"{rung.name}: {n:,} parameters, {res.tokens_seen:,} tokens, "
                                             f"validation loss {res.val_loss:.3f} "
                                             f"({time.perf_counter() - t0:.0f} s with data and evaluation)"))
    return analyse(args.budget_s, points, stopped)


def analyse(budget_s: float, points: list[LadderPoint], stopped: bool = False) -> ScalingResult:
    """The fits over the ladder's points, with a note in words wherever a fit could not be made or reads oddly."""
    notes: list[str] = []
    if stopped:
        notes.append(f"stopped after {len(points)} model(s); only finished models are shown")
    law = fit_c = opt = iso = None
    if len(points) >= 4:
        obs = [(p.params, f / (6.0 * p.params), v) for p in points for f, v in p.curve]
        try:
            law = fit_joint(*zip(*obs, strict=True))
        except ValueError as e:
            notes.append(f"the law L(N, D) did not fit: {e}")
        fr = frontier([pt for p in points for pt in p.curve])
        if len(fr) >= 4:
            fit_c = fit_power_law([f for f, _ in fr], [v for _, v in fr])
        else:
            notes.append(f"the compute frontier has {len(fr)} points; the loss-vs-FLOPs fit needs 4")
    else:
        notes.append(f"{len(points)} model(s) finished; fitting the scaling law needs 4")
    if points:
        iso = compute_optimal([p.params for p in points], [p.val_loss for p in points], [p.flops for p in points])
        opt = iso
        lo, hi = points[0].params / 3, points[-1].params * 3
        if law is not None and lo <= law.optimal_params(iso.flops) <= hi:
            n_opt = law.optimal_params(iso.flops)
            d_opt = iso.flops / (6 * n_opt)
            opt = ComputeOptimal(params=n_opt, tokens=d_opt, tokens_per_param=d_opt / n_opt, flops=iso.flops,
                                 loss=float(law(n_opt, d_opt)), method="law",
                                 chinchilla_params=iso.chinchilla_params)
        elif law is not None:
            notes.append("the law's optimum lies far outside the ladder; the best model's size is shown instead")
        best = min(range(len(points)), key=lambda j: points[j].val_loss)
        if best < len(points) - 1:
            notes.append(f"at this budget the models above {points[best].name} saw too few tokens to beat it: "
                         "the loss turns up with size (small models run out of capacity, large ones out of "
                         "tokens); a larger budget moves the optimum to larger models")
        if iso.method.startswith("edge"):
            notes.append(f"the best model is the ladder's {iso.method[6:]}: the optimum may lie beyond it")
    return ScalingResult(budget_s, points, law, fit_c, opt, iso, stopped, notes)
