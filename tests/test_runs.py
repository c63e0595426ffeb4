"""Runs a person finds again (issue 16): names from settings, the Earlier runs list, resume with the whole loss
history, validation points on the plot at their steps, and pretraining samples at each evaluation.

Real jobs on tiny models (a 2-layer GPT-2 for LoRA, the nano preset for pretraining) in a tmp LLM_STUDIO_HOME."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = ("ROMEO: But soft, what light through yonder window breaks?\n"
          "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n") * 100


@pytest.fixture()
def corpus(tmp_path):
    p = tmp_path / "plays.txt"
    p.write_text(CORPUS)
    return p


def _wait_step(job, n, timeout=120):
    deadline = time.time() + timeout
    while job.running and job.step < n and time.time() < deadline:
        time.sleep(0.005)


def _name(msg: str) -> str:
    return msg.split("**")[1]


def _steps(snap, split):
    return [m["step"] for m in snap["metrics"] if m["split"] == split]


# ---- the trainer: validation at the start, samples with every evaluation -----------------------------------------
def test_pretraining_samples_at_every_evaluation(home, corpus):
    from llm_core.training.train_events import EvalEvent, SampleEvent
    from llm_core.training.trainer import recipe, train

    events = []
    cfg = recipe("tiny", data=str(corpus), out_dir=str(home / "checkpoints" / "t"), max_steps=6, eval_interval=3,
                 eval_at_start=True, sample_at_eval=True, sample_tokens=12)
    train(cfg, callbacks=events.append)
    evals = [e.step for e in events if isinstance(e, EvalEvent)]
    samples = [e for e in events if isinstance(e, SampleEvent)]
    assert evals == [0, 3, 6]  # the curve's starting point, then every 3 steps (6 is also the end)
    assert [s.step for s in samples] == evals and all(s.text for s in samples)


def test_time_budget_evaluates_by_the_clock(home, corpus):
    """With eval_every_s an evaluation comes after that much training time, however slow the machine is:
    the step interval is off here, so every evaluation after the start is the clock's."""
    from llm_core.training.train_events import EvalEvent, StepEvent
    from llm_core.training.trainer import recipe, train

    events = []
    cfg = recipe("tiny", data=str(corpus), out_dir=str(home / "checkpoints" / "c"), max_steps=40, eval_interval=0,
                 eval_every_s=1e-9, eval_at_start=True)
    train(cfg, callbacks=events.append)
    evals = [e.step for e in events if isinstance(e, EvalEvent)]
    assert evals == list(range(0, 41)) and max(e.step for e in events if isinstance(e, StepEvent)) == 40


# ---- the loss plot ----------------------------------------------------------------------------------------------
def test_plot_has_validation_points_at_their_steps_on_a_whole_step_axis():
    from ui.job_panel import loss_frame, nice_ceiling, poll
    from ui.jobs import JobManager

    jobs = JobManager()
    gate = threading.Event()

    def runner(job):
        job.report(0, val_loss=4.0, total_steps=12)
        for i in range(1, 13):
            job.report(i, loss=4.0 - i / 4)
            if i % 4 == 0:
                job.report(i, val_loss=4.2 - i / 4)
        gate.wait(10)

    job = jobs.start("finetune", "plot", runner)
    deadline = time.time() + 10
    while job.step < 12 and time.time() < deadline:
        time.sleep(0.01)
    out = poll("finetune", jobs, None)
    frame = out[2]["value"]
    val = frame[frame["split"] == "validation"]
    assert list(val["step"]) == [0, 4, 8, 12] and list(val["loss"]) == [4.0] + [4.2 - s / 4 for s in (4, 8, 12)]
    assert list(frame[frame["split"] == "train"]["step"]) == list(range(1, 13))
    assert str(frame["step"].dtype) == "int64"
    assert out[2]["x_lim"] == [0, 12]  # the run's length: whole-step ticks, the curve grows across a fixed axis
    # the chart is rebuilt once with both series (its legend and colours come from the data at that moment)
    assert poll("finetune", jobs, out[-1])[2]["title"] == "Loss (train and validation)"
    gate.set()
    jobs.wait(job, 10)
    assert [nice_ceiling(x) for x in (1, 3, 7, 11, 140)] == [1, 5, 10, 20, 200]
    assert loss_frame(None).empty


# ---- pretraining: names, the list, resume with the whole history ---------------------------------------------
def test_pretrain_names_follow_settings_and_are_never_reused(home, corpus):
    from ui.jobs import JobManager
    from ui.pretrain_tab import runs_update, start_pretrain

    jobs = JobManager()
    first = start_pretrain("upload", [str(corpus)], "char", 256, "nano", "", 0, 5, jobs=jobs)
    a = _name(first)
    assert jobs.wait(jobs.current(), 120) and jobs.latest("pretrain").status == "finished"
    # the same settings again in the same second: the finished run keeps its name, the new one gets "-2"
    b = _name(start_pretrain("upload", [str(corpus)], "char", 256, "nano", "", 0, 5, jobs=jobs))
    assert b == f"{a}-2" and "Started" in first
    jobs.wait(jobs.current(), 120)
    c = _name(start_pretrain("upload", [str(corpus)], "char", 256, "nano", "", 0, 6, jobs=jobs))
    assert len({a, b, c}) == 3 and c.startswith("nano-mytext-char-")
    jobs.wait(jobs.current(), 120)
    with pytest.warns(UserWarning, match="An earlier run is named"):
        msg = start_pretrain("upload", [str(corpus)], "char", 256, "nano", a, 0, 5, jobs=jobs)
    assert "finished" in msg and jobs.current() is None
    rows, choices = runs_update(jobs)
    assert {r[0] for r in rows} == {a, b, c} and {r[2] for r in rows} == {"finished"}
    assert [r[1] for r in rows if r[0] == a] == ["5 / 5"] and set(choices["choices"]) == {a, b, c}


def test_pretrain_resume_continues_from_the_saved_step_with_the_whole_history(home, corpus):
    from ui.jobs import JobManager
    from ui.pretrain_tab import resume_pretrain, start_pretrain, stop_job
    from ui.runs import load_record

    jobs = JobManager()
    name = _name(start_pretrain("upload", [str(corpus)], "char", 256, "nano", "", 0, 20, jobs=jobs))
    job = jobs.current()
    _wait_step(job, 3)
    stop_job("pretrain", jobs)
    assert jobs.wait(job, 60) and job.status == "stopped"
    stopped_at = job.step
    assert 3 <= stopped_at < 20 and load_record("pretrain", name).status == "stopped"
    assert job.snapshot()["samples"][0][0] == 0  # a sample at the first evaluation, before any step
    msg = resume_pretrain(name, jobs)
    assert msg == f"Resuming **{name}** from step {stopped_at}."
    job2 = jobs.current()
    assert jobs.wait(job2, 120) and job2.status == "finished", job2.log
    snap = job2.snapshot()
    assert _steps(snap, "train") == list(range(1, 21))  # both parts, each step once
    val = _steps(snap, "validation")
    assert val[0] == 0 and val[-1] == 20 and any(s <= stopped_at for s in val[1:]) and any(s > stopped_at for s in val)
    rec = load_record("pretrain", name)
    assert rec.status == "finished" and rec.step == 20 and _steps({"metrics": rec.metrics}, "train") == list(range(1, 21))
    assert {s for s, _ in snap["samples"]} == set(val[val.index(next(s for s in val if s > stopped_at)):])
    with pytest.warns(UserWarning, match="finished its budget"):
        resume_pretrain(name, jobs)


# ---- fine-tuning: CSV upload, same settings resume -------------------------------------------------------------
def test_finetune_same_settings_resume_a_stopped_run_from_a_csv(registry, tmp_path):
    from ui.finetune_tab import check_dataset, start_finetune, stop_job
    from ui.jobs import JobManager
    from ui.runs import list_runs

    data = tmp_path / "greet.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "input", "output"])
        w.writerows([f"say hi {i}", "", "hi, friend!"] for i in range(24))
    md, preview = check_dataset("upload", str(data), "auto", None, 64, registry)
    assert "24 alpaca records" in md and any(lab == "learned" and "hi, friend!" in t for t, lab in preview)
    jobs = JobManager()
    args = dict(source="upload", upload=str(data), fmt="auto", model_key=None, name="", rank=4, alpha=8, dropout=0.0,
                targets=["q_proj", "v_proj"], lr=1e-3, epochs=1, max_steps=40, batch_size=2, grad_accum=1,
                max_length=64, seed=0, registry=registry, jobs=jobs)
    name = _name(start_finetune(**args))
    assert name.startswith("greet-")
    job = jobs.current()
    _wait_step(job, 2)
    stop_job("finetune", jobs)
    assert jobs.wait(job, 60) and job.status == "stopped"
    stopped_at = job.step
    # the same settings (even uploaded again, at another temporary path) map to the same name: a resume
    again = tmp_path / "again"
    again.mkdir()
    (again / "greet.csv").write_bytes(data.read_bytes())
    msg = start_finetune(**{**args, "upload": str(again / "greet.csv")})
    assert msg.startswith(f"Resuming **{name}** from step {stopped_at} ")
    job2 = jobs.current()
    assert jobs.wait(job2, 120) and job2.status == "finished", job2.log
    snap = job2.snapshot()
    assert _steps(snap, "train") == list(range(1, 41)) and _steps(snap, "validation")[0] == 0
    assert any("resumed from" in line and f"step {stopped_at}" in line for line in snap["log"])
    assert [(r.name, r.status, r.step) for r in list_runs("finetune")] == [(name, "finished", 40)]
    # after it finished, the same settings start a new run under a new name
    other = _name(start_finetune(**{**args, "max_steps": 2}))
    assert other != name
    jobs.wait(jobs.current(), 60)


def test_runs_table_marks_a_dead_running_record_interrupted(home):
    from ui.runs import RunRecord, list_runs, load_record, save_record, table

    out = home / "adapters" / "x"
    out.mkdir(parents=True)
    rec = RunRecord("finetune", "x", str(out), {"lr": 1e-3}, key="k", step=7, total_steps=10,
                    metrics=[{"step": 1, "loss": 2.0, "split": "train"}, {"step": 0, "loss": 3.0, "split": "validation"}])
    path = save_record(rec)
    assert not list(path.parent.glob(".*.tmp"))  # written through a temp file, then renamed
    back = load_record("finetune", "x")
    assert back.metrics == rec.metrics and back.step == 7
    assert table(list_runs("finetune"))[0][:3] == ["x", "7 / 10", "interrupted"]
    assert table(list_runs("finetune"), running="x")[0][2] == "running"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        load_record("finetune", "x")
    assert list_runs("finetune") == []
    assert isinstance(Path(out), Path)
