"""Tokenizer, Model, Pretrain and Fine-tune tab handlers refusing bad input in words (no class names, no temp
paths, nothing started, nothing wiped), and errors turned into sentences. Tiny checkpoints, no training runs."""

from __future__ import annotations

import json
import re

import pytest

from tests.test_app import make_tiny_checkpoint

SKIP = {"__type__": "update"}
CLASS_NAME = re.compile(r"\b[A-Z][a-zA-Z]*(Error|Exception)\b")


# ---- errors in words ---------------------------------------------------------------------------------------------
def test_readable_error_has_no_class_names_or_temp_paths(tmp_path):
    import tempfile

    from ui.errors import readable_error

    up = f"{tempfile.gettempdir()}/gradio/4f2a9c/my notes.txt"
    assert readable_error(FileNotFoundError(2, "No such file or directory", up)) == \
        "my notes.txt: no such file or directory"
    assert readable_error(ValueError(f"{up}: line 3: not valid JSON")) == "my notes.txt: line 3: not valid JSON"
    assert readable_error(KeyError("vocab")) == "vocab is missing"
    assert readable_error(RuntimeError()) .startswith("something went wrong")
    assert "memory" in readable_error(MemoryError())


def test_failed_job_says_why_in_words_and_keeps_tracebacks_out_of_the_log(tmp_path, capsys):
    import tempfile

    from ui.jobs import JobManager

    jobs = JobManager()

    def boom(job):
        raise FileNotFoundError(2, "No such file or directory", f"{tempfile.gettempdir()}/gradio/abc/corpus.txt")

    job = jobs.start("pretrain", "bad", boom)
    assert jobs.wait(job, timeout=10)
    assert job.error == "corpus.txt: no such file or directory"
    log = "\n".join(job.log)
    assert "Traceback" not in log and not CLASS_NAME.search(log) and "/gradio/" not in log
    assert "Traceback" in capsys.readouterr().err  # the details are in the server log


# ---- tokenizer tab -----------------------------------------------------------------------------------------------
def test_tokenizer_error_shows_in_its_own_panel_only(registry):
    from ui.tokenizer_tab import CHAR, tokenize_view

    text = "Tokyo is 東京."  # the tiny checkpoint's character vocabulary has no 東
    a_pieces, a_md = tokenize_view(text, CHAR, registry)
    b_pieces, b_md = tokenize_view(text, registry.default_key, registry)
    assert len(a_pieces) == len(text) and f"**{len(text)} tokens**" in a_md  # A keeps its result
    assert b_pieces == [] and b_md.startswith("⚠️ This tokenizer cannot encode the text")
    assert "東" in b_md and not CLASS_NAME.search(b_md)
    gone_pieces, gone_md = tokenize_view(text, "ckpt:/nonexistent/folder", registry)
    assert gone_pieces == [] and "Could not load this tokenizer" in gone_md


def test_long_text_draws_a_capped_number_of_chips(registry):
    from ui.tokenizer_tab import CHAR, MAX_CHIPS, tokenize_view

    text = "abcde" * 1000
    pieces, md = tokenize_view(text, CHAR, registry)
    assert len(pieces) == MAX_CHIPS == 2000 and "".join(p for p, _ in pieces) == text[:MAX_CHIPS]
    assert "**5,000 tokens**" in md and "Showing the first 2,000 of 5,000 tokens" in md
    short, md2 = tokenize_view("abc", CHAR, registry)
    assert len(short) == 3 and "Showing" not in md2


# ---- model tab ---------------------------------------------------------------------------------------------------
def test_model_tab_empty_prompt_warns_and_keeps_the_heatmap(registry):
    from ui.model_tab import show_attention

    with pytest.warns(UserWarning, match="Type a prompt"):
        assert show_attention(None, "   ", 0, 0, "head", registry) == (SKIP,) * 4
    st, fig, caption, profile = show_attention(None, "to be", 0, 0, "head", registry)
    assert st["maps"].shape[2] == 5 and "5 tokens" in caption and profile


def test_model_tab_missing_model_says_why_in_the_summary(registry):
    from ui.model_tab import describe_model

    md, *rest = describe_model("ckpt:/nonexistent/folder", registry)
    assert md.startswith("⚠️ Could not load this model") and rest == [SKIP] * 3


def test_model_tab_lists_checkpoints_and_adapters(registry, home):
    from ui.model_tab import _refresh

    make_tiny_checkpoint(home / "checkpoints" / "second", seed=1)
    ad = home / "adapters" / "greeter"
    ad.mkdir(parents=True)
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": registry.default_model}))
    upd = _refresh(None, registry)
    labels = [label for label, _ in upd["choices"]]
    assert upd["choices"] == registry.choices() and upd["value"] == registry.default_key
    assert any("second" in lab for lab in labels) and any("greeter" in lab for lab in labels)


# ---- pretrain and fine-tune: sane maxima and the configs' own rules, nothing started --------------------------------
@pytest.mark.parametrize("minutes,steps,expect", [
    (1e9, 0, "Time budget (minutes) must be between 0 and 1,440, got 1e+09"),
    (0, 0, "Set a time budget or a step budget"),
    (3, 1e12, "Step budget must be between 0 and 1,000,000"),
    (None, 2.5, "Step budget must be a whole number"),
])
def test_pretrain_refuses_absurd_budgets(home, minutes, steps, expect):
    from ui.jobs import JobManager
    from ui.pretrain_tab import start_pretrain

    jobs = JobManager()
    with pytest.warns(UserWarning, match=re.escape(expect)):
        msg = start_pretrain("shakespeare", None, "char", 1024, "nano", "", minutes, steps, jobs=jobs)
    assert msg.startswith("⚠️") and expect in msg and jobs.current() is None


def test_pretrain_without_files_says_so(home):
    from ui.jobs import JobManager
    from ui.pretrain_tab import start_pretrain

    with pytest.warns(UserWarning):
        msg = start_pretrain("upload", [], "char", 1024, "nano", "", 3, 0, jobs=JobManager())
    assert "Upload one or more text files" in msg


FT = dict(source="demo", upload=None, fmt="auto", model_key=None, name="x", rank=4, alpha=8, dropout=0.0,
          targets=["q_proj"], lr=2e-4, epochs=1, max_steps=10, batch_size=2, grad_accum=1, max_length=64, seed=0)


@pytest.mark.parametrize("change,expect", [
    (dict(lr=1e6), "Learning rate must be > 0 and at most 1"),
    (dict(lr=None), "Learning rate is empty"),
    (dict(seed=1e30), "Seed must be a whole number from 0 to 2^63 - 1"),
    (dict(max_steps=0, epochs=1e9), "Epochs must be between 0 and 100"),
    (dict(max_steps=1e9), "Max steps must be between 0 and 100,000"),
    (dict(source="upload"), "Upload a dataset file"),
    (dict(targets=[]), "Target modules is empty"),
])
def test_finetune_refuses_bad_settings_before_starting(registry, change, expect):
    from ui.finetune_tab import start_finetune
    from ui.jobs import JobManager

    jobs = JobManager()
    with pytest.warns(UserWarning) as rec:
        msg = start_finetune(**{**FT, **change}, registry=registry, jobs=jobs)
    assert expect in msg and expect in str(rec[0].message) and jobs.current() is None
    assert "Overflow" not in msg and not CLASS_NAME.search(msg)


def test_finetune_check_without_upload_says_so(registry):
    from ui.finetune_tab import check_dataset

    md, preview = check_dataset("upload", None, "auto", None, 64, registry)
    assert "Upload a dataset file" in md and preview == []


# ---- the tokenizer zoo's training is a job: merges done, stop, back after a reload --------------------------------
def _zoo_text() -> str:
    from llm_core.training.data import shakespeare_text

    return shakespeare_text()[:10_000]


def _zoo_tab(jobs):
    import gradio as gr

    from ui.tokenizer_tab import create_zoo_panel

    with gr.Blocks():
        return create_zoo_panel(jobs)


def test_tokenizer_zoo_job_reports_merges_and_the_reloaded_tab_shows_the_table():
    from ui.jobs import Job, JobManager
    from ui.tokenizer_tab import start_zoo

    jobs = JobManager()
    seen: list[str] = []
    real = Job.progress

    def spy(self, fraction, detail):
        seen.append(detail)
        real(self, fraction, detail)

    assert start_zoo("", None, 300, jobs).startswith("Type or upload") and jobs.jobs() == []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Job, "progress", spy)
        msg = start_zoo(_zoo_text(), None, 400, jobs)
        (job,) = jobs.jobs()
        assert "Training" in msg and job.kind == "tokenizer"
        assert jobs.wait(job, timeout=120), "the tokenizer job did not end within 120 s"
    assert job.status == "finished", job.error
    merges = [d for d in seen if d.startswith("bpe: ") and d.endswith(" merges")]
    assert merges and merges[-1] == "bpe: 143 / 143 merges"  # 400 = 256 bytes + 1 special + 143 merges
    assert any(d.startswith("wordpiece: ") for d in seen) and any("pruning rounds" in d for d in seen)
    status, _prog, log, _seen, table = _zoo_tab(jobs)["on_load"]["fn"]()
    assert "finished" in status and "training bpe" in log
    assert "| bpe | 400 |" in table and "How each splits" in table


def test_tokenizer_zoo_job_stops_between_merges_and_says_so():
    from ui.jobs import Job, JobManager
    from ui.tokenizer_tab import start_zoo

    jobs = JobManager()
    real = Job.progress

    def stop_in_bpe(self, fraction, detail):
        real(self, fraction, detail)
        if detail.startswith("bpe: "):
            self.stop_event.set()  # what the Stop button does (jobs.stop)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Job, "progress", stop_in_bpe)
        start_zoo(_zoo_text(), None, 2000, jobs)
        (job,) = jobs.jobs()
        assert jobs.wait(job, timeout=120), "the tokenizer job did not end within 120 s"
    assert job.status == "stopped"
    assert "stopped early" in job.result
    bpe_row = next(line for line in job.result.splitlines() if line.startswith("| bpe |"))
    assert int(bpe_row.split("|")[2].replace(",", "")) < 2000  # it stopped before reaching the asked size


def test_a_failed_zoo_job_says_why_in_its_panel():
    from ui.jobs import JobManager
    from ui.tokenizer_tab import start_zoo

    jobs = JobManager()
    start_zoo("tiny text", None, 5000, jobs)
    (job,) = jobs.jobs()
    assert jobs.wait(job, timeout=60)
    table = _zoo_tab(jobs)["on_load"]["fn"]()[-1]
    assert job.status == "failed" and table.startswith("⚠️") and "too short" in table
