"""App plumbing without models: settings from env/flags, the one-job-at-a-time manager and its status panel."""

from __future__ import annotations

import threading
import time

import pytest

from ui.job_panel import fmt_duration, poll, progress_html, status_markdown
from ui.jobs import JobBusyError, JobManager
from ui.settings import parse_settings


def test_settings_defaults_bind_localhost_without_login():
    s = parse_settings([], env={})
    assert (s.host, s.port, s.auth) == ("127.0.0.1", 7860, None)


def test_settings_env_then_flags_take_precedence():
    env = {"GRADIO_SERVER_PORT": "7999", "STUDIO_USER": "ada", "STUDIO_PASSWORD": "pw", "STUDIO_HOST": "0.0.0.0"}
    s = parse_settings([], env=env)
    assert (s.host, s.port, s.auth) == ("0.0.0.0", 7999, ("ada", "pw"))
    s = parse_settings(["--port", "8123", "--host", "127.0.0.1", "--user", "bob", "--password", "x"], env=env)
    assert (s.host, s.port, s.auth) == ("127.0.0.1", 8123, ("bob", "x"))


def test_settings_space_binds_all_interfaces():
    assert parse_settings([], env={"SPACE_ID": "me/studio"}).host == "0.0.0.0"


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--port", "abc"], ["--user", "only-user"]])
def test_settings_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit):
        parse_settings(argv, env={})
    assert capsys.readouterr().err  # argparse printed why


def _wait_for_step(job, step: int, timeout: float = 30.0) -> None:
    """Poll until the job reports ``step``; fail (never hang CI) when it does not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while job.step < step:
        if time.monotonic() > deadline:
            pytest.fail(f"job {job.title!r} reached step {job.step}, not {step}, within {timeout} s "
                        f"(status {job.status}, error {job.error})")
        time.sleep(0.01)


def _slow_runner(job, steps=200):
    for i in range(1, steps + 1):
        if job.stop_event.is_set():
            return None
        job.report(i, loss=5.0 / i, total_steps=steps, val_loss=6.0 / i if i % 5 == 0 else None)
        time.sleep(0.01)
    return "/tmp/out"


def test_one_job_at_a_time_and_stop():
    jobs = JobManager()
    job = jobs.start("pretrain", "first", _slow_runner)
    with pytest.raises(JobBusyError, match="already running"):
        jobs.start("finetune", "second", _slow_runner)
    _wait_for_step(job, 3)
    assert jobs.stop("finetune") is None  # a stop for the other kind does not touch this job
    assert jobs.stop("pretrain") is job
    assert jobs.wait(job, timeout=10)
    assert job.status == "stopped" and job.step < 200
    # the slot is free again
    job2 = jobs.start("finetune", "second", lambda j: _slow_runner(j, 5))
    assert jobs.wait(job2, timeout=10) and job2.status == "finished" and job2.output == "/tmp/out"


def test_failed_job_reports_its_error_and_frees_the_slot():
    jobs = JobManager()

    def boom(job):
        job.report(1, loss=1.0)
        raise ValueError("corpus is empty")

    job = jobs.start("pretrain", "bad", boom)
    jobs.wait(job, timeout=10)
    assert job.status == "failed" and "corpus is empty" in job.error
    assert "corpus is empty" in status_markdown(job.snapshot(), "pretrain")
    assert jobs.current() is None


def test_status_panel_after_reload_shows_the_job_again():
    jobs = JobManager()
    gate = threading.Event()

    def runner(job):
        for i in range(1, 4):
            job.report(i, loss=3.0 - i, total_steps=10)
        gate.wait(10)
        return None

    job = jobs.start("finetune", "demo run", runner)
    _wait_for_step(job, 3)
    # a fresh page has no state (seen=None): it gets the full status, plot rows and log
    status, prog, plot, log, _samples, seen = poll("finetune", jobs, None)
    frame = plot["value"]
    assert "demo run" in status and "step 3 / 10" in status and "ETA" in status
    assert list(frame["loss"]) == [2.0, 1.0, 0.0] and set(frame["split"]) == {"train"}
    assert "30%" in prog and "started" in log
    # the series changed (none -> train): one more update with the title naming them rebuilds the chart
    again = poll("finetune", jobs, seen)
    assert again[2]["title"] == "Loss (train)"
    assert again[2]["x_lim"] == [0, 10]  # the step axis spans the run
    # a rebuild may draw the data from before it: the same data is sent once more, settings unchanged
    third = poll("finetune", jobs, again[-1])
    assert third[2]["title"] == "Loss (train)" and list(third[2]["value"]["loss"]) == [2.0, 1.0, 0.0]
    # then nothing new: the plot is not re-sent (no flicker)
    fourth = poll("finetune", jobs, third[-1])
    assert fourth[2] == fourth[3] == {"__type__": "update"}  # gr.skip(): plot and log untouched
    # the other tab tells that a job of another kind is running
    assert "only one job runs at a time" in poll("pretrain", jobs, None)[0]
    gate.set()
    jobs.wait(job, timeout=10)


def test_fmt_duration_and_progress():
    assert fmt_duration(5) == "5 s" and fmt_duration(125) == "2 min 05 s" and fmt_duration(None) == "—"
    assert "width:0.0%" in progress_html(None)
