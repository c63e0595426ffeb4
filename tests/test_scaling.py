"""Scaling laws (issue 17): the power-law fit recovers known exponents, the compute-optimal size sits at the IsoFLOP
minimum, a too-small budget is refused before anything starts, and one lean real ladder through the trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llm_core.labs.scaling import (
    CHINCHILLA_TOKENS_PER_PARAM,
    LadderPoint,
    Rung,
    ScalingArgs,
    analyse,
    check_budget,
    compute_optimal,
    fit_joint,
    fit_power_law,
    frontier,
    run_ladder,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- fits on synthetic points ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_fit_recovers_a_known_exponent_and_floor_from_noisy_points(seed):
    rng = np.random.default_rng(seed)
    n = np.geomspace(1e5, 5e6, 6)  # the ladder's span
    a, alpha, c = 40.0, 0.3, 1.2
    loss = a * n ** -alpha + c + rng.normal(0, 0.01, n.size)
    fit = fit_power_law(n, loss)
    assert abs(fit.alpha - alpha) < 0.08 and abs(fit.c - c) < 0.2
    assert 0 < fit.alpha_err < 0.1 and abs(fit.alpha - alpha) < 3.5 * fit.alpha_err + 0.01  # an honest error bar
    assert fit.r2 > 0.99 and fit.n_points == 6
    assert np.allclose(fit(n), a * n ** -alpha + c, atol=0.05)  # the curve in the original units of N


def test_fit_is_exact_without_noise_at_flops_scale():
    flops = np.geomspace(1e11, 1e15, 8)  # x spanning 4 decades at 1e15: the rescaling keeps the fit conditioned
    loss = 900.0 * flops ** -0.25 + 1.5
    fit = fit_power_law(flops, loss)
    assert fit.alpha == pytest.approx(0.25, abs=1e-3) and fit.c == pytest.approx(1.5, abs=1e-3)
    assert fit.a == pytest.approx(900.0, rel=0.02)


def test_joint_fit_refuses_too_few_losses():
    with pytest.raises(ValueError, match="at least 8 validation losses from 3 sizes, got 6 from 6"):
        fit_joint(SIZES, [1e5] * 6, [3.0, 2.8, 2.6, 2.5, 2.4, 2.35])


def test_fit_refuses_too_few_or_bad_points():
    with pytest.raises(ValueError, match="at least 4 points"):
        fit_power_law([1e5, 1e6, 1e7], [3.0, 2.0, 1.5])
    with pytest.raises(ValueError, match="x > 0"):
        fit_power_law([0, 1e5, 1e6, 1e7], [3.0, 2.5, 2.0, 1.5])


def test_frontier_keeps_only_points_that_beat_all_cheaper_ones():
    pts = [(1e12, 3.0), (2e12, 2.5), (3e12, 2.7), (4e12, 2.2), (4e12, 2.4), (8e12, 2.3), (0.0, 1.0)]
    assert frontier(pts) == [(1e12, 3.0), (2e12, 2.5), (4e12, 2.2)]


def test_compute_optimal_finds_the_isoflop_minimum_between_models():
    n = np.geomspace(1e5, 5e6, 6)
    true_opt = 6e5
    loss = 2.0 + 0.3 * (np.log10(n) - np.log10(true_opt)) ** 2  # a U in log N, as at a fixed budget
    budget = 1e13
    opt = compute_optimal(n, loss, [budget] * n.size)
    assert opt.method == "parabola" and opt.params == pytest.approx(true_opt, rel=1e-6)
    assert opt.tokens == pytest.approx(budget / (6 * true_opt)) and opt.loss == pytest.approx(2.0)
    assert opt.tokens_per_param == pytest.approx(opt.tokens / opt.params)
    assert opt.chinchilla_params == pytest.approx(math.sqrt(budget / (6 * CHINCHILLA_TOKENS_PER_PARAM)))
    falling = compute_optimal(n, 3.0 - np.log10(n) / 10, [budget] * n.size)  # still improving at the top
    assert falling.method == "edge: largest" and falling.params == n[-1]


# a law of the size these models follow (E, A, alpha, B, beta), and the ladder's sizes at one budget
LAW = (1.1, 20.0, 0.32, 30.0, 0.28)
SIZES = (108_352, 348_096, 809_856, 1_804_608, 3_054_464, 4_772_096)


def law_loss(n, d, law=LAW):
    e, a, alpha, b, beta = law
    return e + a * np.asarray(n, dtype=float) ** -alpha + b * np.asarray(d, dtype=float) ** -beta


def law_points(budget=1e13, noise=0.01, seed=0, evals=4):
    """Ladder points as run_ladder makes them: each size gets the same FLOPs, with `evals` losses along the way."""
    rng = np.random.default_rng(seed)
    out = []
    for n in SIZES:
        d_end = int(budget / (6 * n))
        curve = [(6.0 * n * d_end * k / evals, float(law_loss(n, d_end * k / evals) + rng.normal(0, noise)))
                 for k in range(1, evals + 1)]
        out.append(LadderPoint(f"{n / 1e6:.1f}M", 2, 2, 32, n, 10, d_end, 6.0 * n * d_end, curve[-1][1], 1.0,
                               d_end / n, curve=curve))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_joint_law_recovers_alpha_and_the_compute_optimal_size(seed):
    pts = law_points(seed=seed)
    law = fit_joint([p.params for p in pts for _ in p.curve],
                    [f / (6 * p.params) for p in pts for f, _ in p.curve], [v for p in pts for _, v in p.curve])
    assert abs(law.alpha - LAW[2]) < 0.06 and abs(law.beta - LAW[4]) < 0.06
    assert 0 < law.alpha_err < 0.1 and abs(law.alpha - LAW[2]) < 4 * law.alpha_err + 0.01
    e, a, alpha, b, beta = LAW  # Chinchilla's closed form for the true law
    true_opt = (alpha * a / (beta * b)) ** (1 / (alpha + beta)) * (1e13 / 6) ** (beta / (alpha + beta))
    assert law.optimal_params(1e13) == pytest.approx(true_opt, rel=0.35)


def test_analyse_reports_the_law_the_optimum_and_a_loss_that_turns_up():
    pts = law_points()
    finals = [p.val_loss for p in pts]
    best = int(np.argmin(finals))
    assert 0 < best < len(pts) - 1  # this budget's profile is a U: the test is about that case
    res = analyse(100.0, pts)
    assert res.law is not None and abs(res.law.alpha - LAW[2]) < 0.06
    assert res.optimal.method == "law" and res.isoflop.method == "parabola"
    assert SIZES[best - 1] < res.optimal.params < SIZES[best + 1]  # the law's optimum sits in the profile's dip
    assert res.optimal.tokens_per_param == pytest.approx(res.optimal.tokens / res.optimal.params)
    assert res.fit_flops is not None and res.fit_flops.alpha > 0  # the frontier falls with compute
    assert any("turns up" in n and pts[best].name in n for n in res.notes)
    d = json.loads(json.dumps(res.to_dict()))  # the CLI's JSON: plain types only
    assert d["alpha"] == res.law.alpha and d["alpha_err"] > 0 and len(d["points"]) == 6
    assert d["compute_optimal"]["params"] == res.optimal.params and d["compute_optimal"]["chinchilla_tokens_per_param"] == 20
    from llm_core.labs.scaling.__main__ import summary

    text = summary(res)
    assert f"alpha = {res.law.alpha:.3f} ± {res.law.alpha_err:.3f}" in text and "tokens/parameter" in text
    few = analyse(100.0, pts[:2], stopped=True)
    assert few.law is None and any("needs 4" in n for n in few.notes) and any("stopped" in n for n in few.notes)


# ---- bad input -----------------------------------------------------------------------------------------------
def test_ladder_spans_0_1m_to_5m_parameters_as_counted_before_building():
    from llm_core.labs.scaling import LADDER
    from llm_core.labs.scaling.ladder import _params
    from llm_core.model.config import ModelConfig

    counts = [_params(ModelConfig.from_preset("nano", vocab_size=65, n_layer=r.n_layer, n_head=r.n_head,
                                              n_embd=r.n_embd).to_dict()) for r in LADDER]
    assert counts == [r.approx_params(65, 64) for r in LADDER]  # the formula is the model's own count
    assert 0.09e6 < counts[0] < 0.15e6 and 4e6 < counts[-1] < 5.5e6 and counts == sorted(counts)
    assert [r.name for r in ScalingArgs(models=4).rungs()] == ["0.1M", "0.8M", "1.8M", "4.8M"]


def test_too_small_budget_is_refused_before_starting_with_the_minimum(home):
    args = ScalingArgs(budget_s=12, models=4)
    with pytest.raises(ValueError, match=r"too small.*each of the 4 models 3\.0 s.*smallest \(0\.1M\).*at least 20 s"):
        run_ladder(args)  # raises before any data is prepared or model built
    assert not (home / "datasets").exists()
    check_budget(ScalingArgs(budget_s=20, models=4))  # the minimum itself is accepted
    with pytest.raises(ValueError, match="models must be 2 to 6"):
        check_budget(ScalingArgs(models=9))


def test_cli_refuses_too_small_budget_in_words(capsys):
    from llm_core.labs.scaling.__main__ import main, parse_args

    args = parse_args(["--budget-s", "5", "--models", "5", "--json"])
    assert args.budget_s == 5 and args.models == 5 and args.json and args.data == "shakespeare"
    with pytest.raises(ValueError, match="Give at least 25 s"):
        main(args)


# ---- one real ladder through the trainer --------------------------------------------------------------------
TINY_LADDER = (Rung("8k", 1, 2, 16), Rung("30k", 2, 2, 32), Rung("0.1M", 2, 4, 64), Rung("0.35M", 3, 4, 96))


@pytest.mark.slow
def test_real_ladder_gives_well_formed_points_and_fits(home, tmp_path):
    from llm_core.training.data import shakespeare_text

    corpus = tmp_path / "plays.txt"
    corpus.write_text(shakespeare_text()[:300_000], encoding="utf-8")
    events = []
    args = ScalingArgs(budget_s=16.0, data=str(corpus), ladder=TINY_LADDER, min_rung_s=4.0, evals=2, num_threads=1,
                       out_dir=str(tmp_path / "ladder"))
    res = run_ladder(args, progress=events.append)
    assert not res.stopped and [p.name for p in res.points] == [r.name for r in TINY_LADDER]
    params = [p.params for p in res.points]
    assert params == sorted(params) and params[0] < 10_000 < 300_000 < params[-1]
    for p in res.points:
        assert p.steps > 0 and p.tokens == p.steps * 12 * 64  # the recipe's batch 12 x context 64
        assert p.flops == 6.0 * p.params * p.tokens and p.tokens_per_param == pytest.approx(p.tokens / p.params)
        assert 4.0 <= p.train_s < 8.0, p.train_s  # its equal share (4 s) and the last step/evaluation, no more
        assert p.val_loss < math.log(80) - 0.5  # it learned: well below a uniform guess over ~80 characters
        assert p.curve[-1] == (p.flops, p.val_loss) and all(f > 0 for f, _ in p.curve)
        assert (tmp_path / "ladder").is_dir() and any((tmp_path / "ladder").glob(f"*-{p.name}/config.json"))
    # the same seconds buy a 40x larger model far fewer tokens: the budget was split by time, not by tokens
    assert res.points[0].tokens > 2 * res.points[-1].tokens
    # the law is fitted on every validation loss (4 sizes x 3): finite, or a note says why not
    assert (res.law is not None and 0 < res.law.alpha <= 2 and math.isfinite(res.law.alpha_err)) or any(
        "did not fit" in n for n in res.notes)
    assert res.optimal is not None and res.optimal.flops == pytest.approx(np.median([p.flops for p in res.points]))
    if res.law is not None:  # the law describes the measured losses it was fitted to (units of N and D kept)
        resid = [abs(float(res.law(p.params, p.tokens)) - p.val_loss) for p in res.points]
        assert np.mean(resid) < 0.1, resid
    fracs = [e.fraction for e in events]
    assert fracs == sorted(fracs) and fracs[0] == 0.0  # the progress bar never runs backwards
    assert [e.point.name for e in events if e.point is not None] == [r.name for r in TINY_LADDER]
    assert events[-1].fraction == 1.0


@pytest.mark.slow
def test_ui_ladder_job_stops_and_keeps_the_finished_models(home, tmp_path):
    """The panel's job: the first finished model reaches the plot, Stop ends the second, the job says stopped."""
    import time

    import gradio as gr

    from llm_core.training.data import shakespeare_text
    from ui.jobs import JobManager
    from ui.scaling_panel import KIND, poll, run_scaling, stop_scaling

    corpus = tmp_path / "plays.txt"
    corpus.write_text(shakespeare_text()[:100_000], encoding="utf-8")
    jobs = JobManager()
    args = ScalingArgs(budget_s=12.0, data=str(corpus), ladder=TINY_LADDER[:2], min_rung_s=2.0, evals=1,
                       num_threads=1)
    job = jobs.start(KIND, "tiny ladder", lambda j: run_scaling(j, args))
    deadline = time.time() + 60
    while time.time() < deadline:
        out = poll(jobs, None)
        if "| 8k |" in out[4]:  # the first model is in the results table
            break
        time.sleep(0.2)
    assert "| 8k |" in out[4] and job.running  # the second model (6 s) is still training
    assert "Stopping" in stop_scaling(jobs)
    assert jobs.wait(job, 60) and job.status == "stopped"
    status, _, by_params, by_flops, results, seen = poll(jobs, None)
    assert list(by_params["value"]["series"]) == ["measured"]  # one point, no law from one model
    assert "stopped after 1 model" in results and "| 30k |" not in results and "stopped" in status
    assert seen[0] == "resend"  # new series: the title changes on this poll and the data goes once more
    again = poll(jobs, seen)  # the titles now name the series: a rebuild, so the data goes once more after it
    assert again[2]["title"].endswith("(log10)") and again[3]["title"].endswith("· 1 model")
    third = poll(jobs, again[5])
    assert again[5][0] == "resend" and len(third[2]["value"]) == 1 and third[5][0] == (job.id, 1, True)
    assert poll(jobs, third[5])[2] == gr.skip()  # nothing new: the plots are not resent
    assert "No scaling ladder is running" in stop_scaling(jobs)


def test_panel_refuses_bad_settings_before_starting(home):
    from ui.jobs import JobManager
    from ui.scaling_panel import start_scaling

    jobs = JobManager()
    msg = start_scaling(10, 4, "shakespeare", None, jobs)
    assert msg.startswith("⚠️") and "at least 20 s" in msg and jobs.latest("scaling") is None
    assert "Models must be between 4 and 6" in start_scaling(240, 3, "shakespeare", None, jobs)
    assert "Upload one or more text files" in start_scaling(240, 4, "upload", [], jobs)
    assert "must be a number" in start_scaling("lots", 4, "shakespeare", None, jobs)


def test_panel_queues_the_ladder_behind_a_running_job_and_stop_cancels_it(home):
    import threading

    from ui.jobs import JobManager
    from ui.scaling_panel import start_scaling, stop_scaling

    jobs, release = JobManager(), threading.Event()
    blocker = jobs.start("finetune", "a fine-tuning run", lambda job: release.wait(60))
    try:
        msg = start_scaling(240, 4, "shakespeare", None, jobs)
        assert "is queued, 1 ahead" in msg and jobs.latest("scaling").queued
        assert stop_scaling(jobs).startswith("Cancelled") and jobs.latest("scaling").status == "cancelled"
    finally:
        release.set()
    assert jobs.wait(blocker, timeout=30)


def test_panel_draws_the_law_the_frontier_and_the_optimum():
    from ui.scaling_panel import flops_frame, params_frame, result_markdown

    pts = law_points()
    res = analyse(100.0, pts)
    pf = params_frame(pts, res)
    assert set(pf["series"]) == {"measured", "law at this budget", "law with unlimited data"}
    curve = pf[pf["series"] == "law at this budget"]
    x_min = float(curve.loc[curve["validation loss"].idxmin(), "log10 parameters"])
    assert x_min == pytest.approx(math.log10(res.optimal.params), abs=0.06)  # the drawn dip is the reported optimum
    unlimited = pf[pf["series"] == "law with unlimited data"]["validation loss"].to_numpy()
    assert np.all(np.diff(unlimited) < 0)  # with enough data, bigger is always better
    ff = flops_frame(pts, res)
    assert set(ff["model"]) == {p.name for p in pts} | {"frontier fit"} and len(ff) == 6 * 4 + 41
    md = result_markdown(pts, res)
    assert f"α = {res.law.alpha:.3f} ± {res.law.alpha_err:.3f}" in md and "tokens per parameter" in md
    assert "Chinchilla: ~20" in md and md.count("\n| ") >= 6
