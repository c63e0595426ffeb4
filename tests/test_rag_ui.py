"""Documents tab helpers: bad input gets its reason (not a red error badge), the supporting sentence is shown."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from tests.conftest import ROOT
from ui import documents_tab as dt


def test_add_without_files_and_empty_question_give_the_reason():
    with pytest.raises(ValueError, match="Choose one or more files"):  # _ingest turns it into gr.Warning + status
        dt.ingest_files(None, "my-documents")
    with pytest.raises(ValueError, match="Type a question"):
        list(dt.ask("   ", "my-documents", "hybrid", 3, "grounded", None, registry=None))


def test_tab_builds_with_the_answer_mode_radio_defaulting_to_grounded():
    with gr.Blocks() as demo:
        dt.create_documents_tab(SimpleNamespace(choices=lambda: [], default_key=None))
    (radio,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "doc-answer-mode"]
    assert radio.value == "grounded" and [c[1] for c in radio.choices] == ["grounded", "reader", "extractive", "generative"]
    assert any(getattr(b, "elem_id", None) == "doc-ask-status" for b in demo.blocks.values())


def test_answer_markdown_marks_the_supporting_sentence():
    cited = SimpleNamespace(n=2, source="manual.pdf", page=10, text="Remote control. Use 115200 baud. Done.",
                            highlight=[16, 32])
    stream = SimpleNamespace(text="Use 115200 baud. [2]", notes=["The question was cut."], abstained=False,
                             answer_mode="grounded", citations=[cited])
    md = dt.answer_markdown(stream)
    assert md.startswith("Use 115200 baud. [2]")
    assert "**Supporting passage [2]** (manual.pdf, page 10)" in md and "<mark>Use 115200 baud.</mark>" in md
    assert md.rstrip().endswith("*The question was cut.*")
    stream.abstained, stream.citations, stream.text = True, [], "I could not find an answer."
    assert dt.answer_markdown(stream).startswith("🤷 I could not find")


# ---- adding files is a job: progress, stop, its turn in the queue, back after a reload, private per person ------
DOCS = ROOT / "tests" / "fixtures" / "rag_eval" / "docs"
SMALL = [str(DOCS / "bsd-license.txt"), str(DOCS / "lab-note.md")]  # small: the embedding stays quick


def _tab(jobs):
    with gr.Blocks():
        return dt.create_documents_tab(SimpleNamespace(choices=lambda: [], default_key=None), jobs=jobs)


def _wait(jobs, job, timeout=120):
    assert jobs.wait(job, timeout=timeout), f"the ingest job did not end within {timeout} s: {job.snapshot()['log']}"


def test_ingest_job_reports_files_and_chunks_and_the_reloaded_tab_shows_its_result(home):
    from ui.jobs import Job, JobManager

    jobs = JobManager()
    seen: list[str] = []
    real = Job.progress

    def spy(self, fraction, detail):
        seen.append(detail)
        real(self, fraction, detail)

    files = SMALL
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Job, "progress", spy)
        msg = dt.start_ingest(files, "notes", jobs)
        (job,) = jobs.jobs()
        assert "Adding 2 file(s) to **notes**" in msg and job.kind == "ingest"
        _wait(jobs, job)
    assert job.status == "finished" and job.fraction == 1.0
    assert "reading files (1/2)" in seen and any(d.startswith("embedding chunks (") for d in seen)
    assert [r[1] for r in job.result["results"]] == ["✅ added", "✅ added"]
    # a reloaded page: the tab's load handler finds the job and shows what it did
    tab = _tab(jobs)
    coll, docs, _pick, status, _prog, log, _seen, results, summary = tab["on_load"]["fn"]("notes", None)
    assert "finished" in status and "→ notes" in status and "added" in log
    assert [r[0] for r in results] == [Path(f).name for f in files] and "2 file(s) added" in summary
    assert len(docs) == 2 and coll["value"] == "notes"


def test_ingest_job_stops_between_files_and_adds_nothing(home):
    from ui.jobs import Job, JobManager

    jobs = JobManager()
    real = Job.progress

    def stop_after_the_first_file(self, fraction, detail):
        real(self, fraction, detail)
        if detail == "reading files (1/3)":
            jobs.stop("ingest")  # the Stop adding button, while the second file is next

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Job, "progress", stop_after_the_first_file)
        dt.start_ingest(sorted(str(p) for p in DOCS.iterdir())[:3], "notes", jobs)
        (job,) = jobs.jobs()
        _wait(jobs, job)
    assert job.status == "stopped" and "nothing was added" in job.result["summary"]
    assert job.detail == "reading files (1/3)"  # it never got to embedding
    assert dt.documents_rows("notes") == []  # the collection holds nothing


def test_an_upload_waits_behind_a_training_job_and_can_be_cancelled(home):
    import threading

    from ui.jobs import JobManager

    jobs = JobManager()
    gate = threading.Event()
    training = jobs.start("pretrain", "a long pretraining run", lambda job: gate.wait(30))
    msg = dt.start_ingest([str(DOCS / sorted(p.name for p in DOCS.iterdir())[0])], "notes", jobs)
    assert "queued, 1 ahead" in msg
    status = _tab(jobs)["on_load"]["fn"]("notes", None)[3]
    assert "queued, 1 ahead" in status
    assert "Cancelled" in dt.stop_job("ingest", jobs)
    gate.set()
    assert jobs.wait(training, timeout=10)
    assert dt.documents_rows("notes") == []


def test_bad_uploads_are_refused_before_a_job_starts(home):
    from ui.jobs import JobManager

    jobs = JobManager()
    with pytest.raises(ValueError, match="Choose one or more files"):
        dt.start_ingest([], "notes", jobs)
    with pytest.raises(ValueError, match="invalid collection name"):
        dt.start_ingest([str(next(DOCS.iterdir()))], "../escape", jobs)
    assert jobs.jobs() == []


def test_ingest_jobs_are_private_to_their_owner(home, monkeypatch):
    from tests.test_isolation import ALICE, BOB, gradio_event
    from ui.jobs import JobManager

    for var in ("SPACE_ID", "STUDIO_ISOLATION"):
        monkeypatch.delenv(var, raising=False)
    jobs = JobManager()
    tab = _tab(jobs)
    with gradio_event(ALICE):
        dt.start_ingest(SMALL[1:], "alice-secret-notes", jobs, ALICE)
        (job,) = jobs.jobs()
    with gradio_event(BOB):  # bob sees no job of alice's, cannot stop it, and his load shows none
        assert jobs.jobs() == [] and jobs.stop("ingest") is None and not job.stop_event.is_set()
        status = tab["on_load"]["fn"]("notes", BOB)[3]
        assert "alice" not in status and "No document ingest job" in status
    _wait(jobs, job)
    with gradio_event(BOB):
        assert "alice" not in tab["on_load"]["fn"]("notes", BOB)[3]
        assert dt.collection_names(BOB) == []
    with gradio_event(ALICE):
        status, *_ = tab["on_load"]["fn"]("alice-secret-notes", ALICE)[3:]
        assert "alice-secret-notes" in status and "finished" in status
        assert dt.collection_names(ALICE) == ["alice-secret-notes"]
