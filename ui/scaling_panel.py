"""Scaling laws panel (Pretrain tab): train a ladder of tiny GPTs for the same time each and see how validation loss
falls with parameters and with training FLOPs, the fitted exponent and the compute-optimal size.

The work is ``llm_core.labs.scaling.run_ladder`` in a JobManager job (kind "scaling": one job at a time, Stop ends the
current model); this module only checks the settings, starts and stops it, and draws what it reports.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import gradio as gr
import pandas as pd

from llm_core.labs.scaling import CHINCHILLA_TOKENS_PER_PARAM, LADDER, ScalingArgs, ScalingResult, check_budget
from ui.errors import finite_number, in_range, readable_error, refuse, whole_number
from ui.job_panel import progress_html, status_markdown
from ui.jobs import Job, JobBusyError, JobManager

KIND = "scaling"
SHAKESPEARE = "shakespeare"
UPLOAD = "upload"
MAX_BUDGET_S = 6 * 3600  # a ladder of a few hours is already long on a CPU; longer: the CLI
BUDGET_LABEL = "Training budget for the whole ladder (seconds)"
HELP = ("Each model trains for the same share of the budget with the Pretrain tab's recipe, on the same text. "
        "Small models run out of **capacity**, large ones run out of **tokens**: at a fixed compute the loss is "
        "U-shaped in size, and its dip is the compute-optimal size. The fitted law "
        "`L(N, D) = E + A·N^-α + B·D^-β` (Chinchilla's) gives the exponent α with its error, and the size it "
        "predicts for the budget. Chinchilla found ~20 training tokens per parameter at the optimum. "
        f"The default ({ScalingArgs().budget_s:.0f} s, {ScalingArgs().models} models) takes about 5 minutes on "
        "2 CPU cores; `python -m llm_core.labs.scaling --budget-s S --json` runs the same from a terminal.")

_results: dict[str, dict[str, Any]] = {}  # job id -> {"points": [...], "result": ScalingResult | None}
_results_lock = threading.Lock()


def ladder_args(budget_s: Any, models: Any, corpus: str, files: list[Any] | None) -> ScalingArgs:
    """The ladder's settings from the panel, refused in words (the budget's minimum included) before a start."""
    budget = in_range(finite_number(budget_s, BUDGET_LABEL), BUDGET_LABEL, 1, MAX_BUDGET_S)
    n = int(in_range(whole_number(models, "Models"), "Models", 4, len(LADDER)))
    data: str | list[str] = SHAKESPEARE
    if corpus == UPLOAD:
        from ui.runs import stable_copy

        paths = [str(f if isinstance(f, str) else getattr(f, "name", None) or getattr(f, "path", ""))
                 for f in files or []]
        paths = [p for p in paths if p]
        if not paths:
            raise ValueError("Upload one or more text files (.txt, .md), or pick the built-in Shakespeare corpus.")
        data = [str(stable_copy(p)) for p in paths]
    args = ScalingArgs(budget_s=budget, models=n, data=data)
    check_budget(args)
    return args


def run_scaling(job: Job, args: ScalingArgs) -> None:
    """Runner for the JobManager: the ladder with its progress forwarded to ``job`` and its points kept here."""
    from llm_core.labs.scaling import run_ladder

    state: dict[str, Any] = {"points": [], "result": None}
    with _results_lock:
        _results.clear()  # only the latest ladder is shown
        _results[job.id] = state

    def progress(ev: Any) -> None:
        job.report(ev.step, fraction=ev.fraction)
        if ev.point is not None:
            with _results_lock:
                state["points"] = state["points"] + [ev.point]
        if ev.message:
            job.add_log(ev.message)

    res = run_ladder(args, progress=progress, stop_event=job.stop_event)
    with _results_lock:
        state["result"] = res
    for note in res.notes:
        job.add_log(f"note: {note}")


def start_scaling(budget_s: Any, models: Any, corpus: str, files: list[Any] | None, jobs: JobManager) -> str:
    """The Start button: the ladder trains models, so behind a running job it waits its turn (Stop cancels it)."""
    try:
        args = ladder_args(budget_s, models, corpus, files)
        job = jobs.start(KIND, f"scaling ladder: {args.models} models, {args.budget_s:g} s",
                         lambda job: run_scaling(job, args))
    except (ValueError, JobBusyError) as e:
        return refuse(readable_error(e))
    return jobs.started_message(job, f"Started the ladder: {args.models} models, {args.share_s():.0f} s of "
                                     "training each.")


def stop_scaling(jobs: JobManager) -> str:
    job = jobs.stop(KIND)
    if job is None:
        return "No scaling ladder is running."
    if job.status == "cancelled":
        return f"Cancelled **{job.title}** before it started."
    return "Stopping the current model; the finished ones are kept and fitted."


def _state(job: Job | None) -> tuple[list[Any], ScalingResult | None]:
    if job is None:
        return [], None
    with _results_lock:
        st = _results.get(job.id, {"points": [], "result": None})
        return list(st["points"]), st["result"]


def params_frame(points: list[Any], res: ScalingResult | None) -> pd.DataFrame:
    """Loss against log10(parameters): the models' final losses, the law at the budget and with unlimited data."""
    rows = [("measured", math.log10(p.params), p.val_loss) for p in points]
    if res is not None and res.law is not None and res.budget_flops and points:
        lo, hi = math.log10(points[0].params) - 0.2, math.log10(points[-1].params) + 0.2
        for k in range(41):
            x = lo + (hi - lo) * k / 40
            n = 10 ** x
            rows.append(("law at this budget", x, float(res.law(n, res.budget_flops / (6 * n)))))
            rows.append(("law with unlimited data", x, float(res.law.E + res.law.A * n ** -res.law.alpha)))
    return pd.DataFrame(rows, columns=["series", "log10 parameters", "validation loss"])


def flops_frame(points: list[Any], res: ScalingResult | None) -> pd.DataFrame:
    """Loss against log10(training FLOPs): each model's learning curve and the fitted compute frontier."""
    rows = [(p.name, math.log10(f), v) for p in points for f, v in p.curve]
    if res is not None and res.fit_flops is not None:
        fs = [f for p in points for f, _ in p.curve]
        lo, hi = math.log10(min(fs)), math.log10(max(fs))
        rows += [("frontier fit", lo + (hi - lo) * k / 40, float(res.fit_flops(10 ** (lo + (hi - lo) * k / 40))))
                 for k in range(41)]
    return pd.DataFrame(rows, columns=["model", "log10 FLOPs", "validation loss"])


def result_markdown(points: list[Any], res: ScalingResult | None) -> str:
    if not points:
        return ""
    lines = ["| model | parameters | tokens | tokens/param | FLOPs | val loss |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {p.name} | {p.params:,} | {p.tokens:,} | {p.tokens_per_param:.2f} | {p.flops:.2e} | "
              f"{p.val_loss:.3f} |" for p in points]
    if res is None:
        return "\n".join(lines)
    if res.law is not None:
        w = res.law
        lines.append(f"\n**Fitted law:** L(N, D) = {w.E:.2f} + {w.A:.3g}·N^-{w.alpha:.3f} + {w.B:.3g}·D^-{w.beta:.3f}"
                     f" · **α = {w.alpha:.3f} ± {w.alpha_err:.3f}**, β = {w.beta:.3f} ± {w.beta_err:.3f} "
                     f"(R² {w.r2:.3f} over {w.n_points} losses)")
    if res.fit_flops is not None:
        f = res.fit_flops
        lines.append(f"\n**Compute frontier:** L(C) = {f.a:.3g}·C^-{f.alpha:.3f} + {f.c:.2f}")
    if res.optimal is not None:
        o = res.optimal
        lines.append(f"\n**Compute-optimal for this budget ({o.flops:.2e} FLOPs):** about {o.params / 1e6:.2f}M "
                     f"parameters trained on {o.tokens:,.0f} tokens = **{o.tokens_per_param:.1f} tokens per "
                     f"parameter** (Chinchilla: ~{CHINCHILLA_TOKENS_PER_PARAM:.0f}, which would pick "
                     f"{o.chinchilla_params / 1e6:.2f}M) · from the {'fitted law' if o.method == 'law' else o.method}")
    lines += [f"\n- {n}" for n in res.notes]
    return "\n".join(lines)


def plot_titles(series: tuple[tuple[str, ...], tuple[str, ...]]) -> tuple[str, str]:
    """The two plots' titles, naming the series they had (see ``poll``)."""
    by_n, by_c = series
    fitted = " · measured and fitted" if len(by_n) > 1 else ""
    k = len([m for m in by_c if m != "frontier fit"])
    models = f" · {k} model{'s' if k != 1 else ''}" if k else ""
    return f"Validation loss vs parameters (log10){fitted}", f"Validation loss vs training FLOPs (log10){models}"


def poll(jobs: JobManager, seen: Any) -> tuple:
    """(status, progress, loss-vs-parameters, loss-vs-FLOPs, results, seen); unchanged plots are skipped.

    As in ``ui.job_panel.poll``: Gradio's LinePlot fixes its colour legend when its chart is rebuilt, which a
    changed title does, from the data it had before. So each title names the series of the previous update (a new
    series changes the title one poll later) and after every rebuild the data is sent once more.
    ``seen`` = (signature, series, titles) sent last."""
    job = jobs.latest(KIND)
    snap = job.snapshot() if job else None
    points, res = _state(job)
    sig = None if job is None else (job.id, len(points), res is not None)
    status = status_markdown(snap, KIND) if snap else "No ladder yet. Set the budget and press **Run the ladder**."
    prev_sig, prev_series, prev_titles = seen if isinstance(seen, tuple) and len(seen) == 3 else ("never", ((), ()),
                                                                                                   None)
    pf, ff = params_frame(points, res), flops_frame(points, res)
    series = (tuple(sorted(set(pf["series"]))), tuple(sorted(set(ff["model"]))))
    titles = plot_titles(prev_series)
    if sig == prev_sig and series == prev_series and titles == prev_titles:
        return status, progress_html(snap), gr.skip(), gr.skip(), gr.skip(), seen
    rebuilt = series != prev_series or titles != prev_titles
    return (status, progress_html(snap), gr.update(value=pf if len(pf) else None, title=titles[0]),
            gr.update(value=ff if len(ff) else None, title=titles[1]), result_markdown(points, res),
            ("resend" if rebuilt else sig, series, titles))


def create_scaling_panel(jobs: JobManager) -> dict[str, Any]:
    d = ScalingArgs()
    with gr.Accordion("Scaling laws: loss against model size and compute", open=False, elem_id="scaling-panel"):
        gr.Markdown(HELP)
        with gr.Row():
            budget = gr.Number(d.budget_s, label=BUDGET_LABEL, elem_id="scaling-budget",
                               info=f"split equally; each model needs at least {d.min_rung_s:g} s")
            models = gr.Slider(4, len(LADDER), value=d.models, step=1, label="Models",
                               info=f"from {LADDER[0].name} to {LADDER[-1].name} parameters", elem_id="scaling-models")
            corpus = gr.Radio([("Shakespeare", SHAKESPEARE), ("My text files", UPLOAD)], value=SHAKESPEARE,
                              label="Text", elem_id="scaling-corpus")
        files = gr.File(file_count="multiple", file_types=[".txt", ".md"], label="Text files", visible=False,
                        height=100)
        with gr.Row():
            start = gr.Button("Run the ladder", variant="primary", elem_id="scaling-start")
            stop = gr.Button("Stop", variant="stop", elem_id="scaling-stop")
        msg = gr.Markdown(elem_id="scaling-msg")
        status = gr.Markdown(elem_id="scaling-status")
        progress = gr.HTML(progress_html(None), elem_id="scaling-progress")
        with gr.Row():
            by_params = gr.LinePlot(None, x="log10 parameters", y="validation loss", color="series", height=300,
                                    title=plot_titles(((), ()))[0], elem_id="scaling-params-plot")
            by_flops = gr.LinePlot(None, x="log10 FLOPs", y="validation loss", color="model", height=300,
                                   title=plot_titles(((), ()))[1], elem_id="scaling-flops-plot")
        results = gr.Markdown(elem_id="scaling-results")
    seen = gr.State(None)
    timer = gr.Timer(1.0)
    timer.tick(lambda s: poll(jobs, s), seen, [status, progress, by_params, by_flops, results, seen],
               show_progress="hidden", concurrency_limit=None)
    corpus.change(lambda c: gr.update(visible=c == UPLOAD), corpus, files)
    start.click(lambda b, m, c, f: start_scaling(b, m, c, f, jobs), [budget, models, corpus, files], msg)
    stop.click(lambda: stop_scaling(jobs), None, msg, queue=False)
    return dict(start=start, stop=stop, budget=budget, plots=(by_params, by_flops), results=results)
