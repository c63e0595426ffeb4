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
    with pytest.raises(JobBusyError, match="already running"):  # a caller that will not wait is refused
        jobs.start("finetune", "second", _slow_runner, queue=False)
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


# ---- the queue ---------------------------------------------------------------------------------------------------
def _wait_until(cond, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


def test_jobs_started_meanwhile_wait_their_turn_in_order():
    jobs = JobManager()
    order: list[str] = []
    gate = threading.Event()

    def runner(name):
        def run(job):
            order.append(name)
            job.report(1, total_steps=1)
            if name == "first":
                gate.wait(10)
            return None
        return run

    first = jobs.start("pretrain", "first", runner("first"))
    _wait_until(lambda: order == ["first"], what="the first job starting")
    second = jobs.start("ingest", "second", runner("second"))
    third = jobs.start("tokenizer", "third", runner("third"))
    assert second.status == third.status == "queued" and order == ["first"]  # nothing runs beside the first
    assert jobs.ahead(second) == 1 and jobs.ahead(third) == 2
    status, *_ = poll("ingest", jobs, None)
    assert "queued, 1 ahead" in status and "second" in status
    assert "queued, 2 ahead" in jobs.started_message(third, "started")
    assert jobs.current() is first
    gate.set()
    for j in (first, second, third):
        assert jobs.wait(j, timeout=10) and j.status == "finished"
    assert order == ["first", "second", "third"]
    assert third.started_at >= second.ended_at  # one after the other, never two at once


def test_a_queued_job_can_be_cancelled_and_never_runs():
    from ui.job_panel import stop_job

    jobs = JobManager()
    gate = threading.Event()
    ran: list[str] = []

    def blocker(job):
        gate.wait(10)

    def never(job):
        ran.append(job.title)

    first = jobs.start("pretrain", "first", blocker)
    waiting = jobs.start("ingest", "upload", never)
    after = jobs.start("tokenizer", "zoo", lambda job: ran.append(job.title))
    assert "Cancelled **upload**" in stop_job("ingest", jobs)  # the Documents tab's Stop: it was only waiting
    assert waiting.status == "cancelled" and not waiting.active and jobs.ahead(after) == 1
    assert stop_job("ingest", jobs).startswith("No document ingest job")
    assert "cancelled" in poll("ingest", jobs, None)[0].lower()
    assert not first.stop_event.is_set()  # cancelling the waiting job left the running one alone
    gate.set()
    assert jobs.wait(after, timeout=10) and after.status == "finished"
    assert ran == ["zoo"]


def test_the_same_run_cannot_wait_twice():
    from types import SimpleNamespace

    jobs = JobManager()
    gate = threading.Event()
    jobs.start("pretrain", "blocker", lambda job: gate.wait(10))
    run = SimpleNamespace(name="r1", total_steps=None)
    queued = jobs.start("finetune", "r1", lambda job: None, run=run)
    with pytest.raises(JobBusyError, match="'r1' is already waiting its turn"):
        jobs.start("finetune", "r1 again", lambda job: None, run=run)
    with pytest.raises(JobBusyError, match="waiting its turn"):
        jobs.check_free("finetune", "r1")
    jobs.check_free("finetune", "r2")  # another name is free
    assert jobs.cancel(queued)
    jobs.check_free("finetune", "r1")
    gate.set()


def test_a_reloaded_panel_finds_the_queued_job_and_the_stop_button_picks_the_one_shown():
    jobs = JobManager()
    gate = threading.Event()
    first = jobs.start("pretrain", "long run", lambda job: gate.wait(10))
    second = jobs.start("pretrain", "next run", lambda job: None)
    # the panel shows the newest waiting or running job of its kind; a fresh page (seen=None) finds it
    assert "next run" in poll("pretrain", jobs, None)[0]
    assert jobs.stop("pretrain") is second and second.status == "cancelled"
    assert "long run" in poll("pretrain", jobs, None)[0]  # then the running one, which Stop now stops
    assert jobs.stop("pretrain") is first and first.stop_event.is_set()
    gate.set()
    assert jobs.wait(first, timeout=10) and first.status == "stopped"
    assert "long run" in poll("pretrain", jobs, None)[0]  # the one that ended last


def test_queued_jobs_stay_private_to_their_owner(home, monkeypatch):
    from tests.test_isolation import ALICE, BOB, gradio_event

    for var in ("SPACE_ID", "STUDIO_ISOLATION"):
        monkeypatch.delenv(var, raising=False)
    jobs = JobManager()
    gate = threading.Event()
    with gradio_event(ALICE):
        running = jobs.start("pretrain", "alice's diary model", lambda job: gate.wait(10))
        waiting = jobs.start("ingest", "alice's secret files", lambda job: None)
    with gradio_event(BOB):
        mine = jobs.start("tokenizer", "bob's zoo", lambda job: None)
        assert jobs.jobs() == [mine] and jobs.latest("ingest") is None and jobs.latest("pretrain") is None
        status = poll("tokenizer", jobs, None)[0]
        assert "queued, 2 ahead" in status and "alice" not in status  # how many wait ahead, not whose or what
        assert "alice" not in poll("ingest", jobs, None)[0]
        assert not jobs.cancel(waiting) and jobs.stop("ingest") is None and waiting.queued
        assert jobs.stop("pretrain") is None and not running.stop_event.is_set()
    with gradio_event(ALICE):
        assert [j.title for j in jobs.jobs()] == ["alice's diary model", "alice's secret files"]
        assert "queued, 1 ahead" in poll("ingest", jobs, None)[0]
    gate.set()
    assert jobs.wait(mine, timeout=10) and mine.status == "finished" and waiting.status == "finished"
