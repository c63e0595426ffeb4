"""The shared training core (llm_core.training.train_loop) seen through LoRA fine-tuning: one event family, early stopping
that keeps the best adapter, checkpoints of the previous format still resume, the one device picker and the one
write-then-replace helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from finetune.config import FinetuneConfig
from finetune.trainer import FinetuneJob
from llm_core.training import train_events
from tests.test_finetune_trainer import adapter_tensors, cfg_for, data_file  # noqa: F401 (a fixture)
from tests.test_finetune_utils import ByteChatTokenizer, tiny_gpt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOK = ByteChatTokenizer()


def assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_early_stopping_keeps_the_best_adapter(data_file: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    # training is real; the validation losses are scripted so that step 4 is the best and 6, 8 are worse
    script = iter([1.0, 0.8, 0.9, 0.95])
    monkeypatch.setattr(FinetuneJob, "evaluate", lambda self, seqs: next(script))
    kw = dict(max_steps=12, eval_interval=2, eval_at_start=False, dropout=0.0)
    events: list = []
    job = FinetuneJob(cfg_for(data_file, tmp_path / "es", patience=2, **kw), model=tiny_gpt(), tokenizer=TOK)
    st = job.run(events.append)
    assert st.state == "done" and st.step == 8 and st.total_steps == 12  # stopped early, after two worse evals
    assert (st.best_step, st.best_eval_loss) == (4, 0.8)
    assert [(e.step, e.best) for e in events if e.kind == "eval"] == [(2, True), (4, True), (6, False), (8, False)]
    end = events[-1]
    assert end.kind == "done" and "early stopping" in end.message and "kept the best adapter, from step 4" in end.message
    assert any("best validation loss so far (0.8000) at step 4" in e.message for e in events if e.kind == "info")
    info = json.loads((tmp_path / "es" / "finetune.json").read_text())
    assert (info["best_step"], info["best_eval_loss"], info["step"]) == (4, 0.8, 8)
    # one event family: what fine-tuning reports are llm_core's events, each with a kind and words
    assert all(isinstance(e, train_events.TrainEvent.__args__) and isinstance(e.message, str) for e in events)

    # the kept adapter is the weights of step 4: a run with the same schedule stopped at step 4 wrote the same
    script = iter([1.0, 0.8])
    ref = FinetuneJob(cfg_for(data_file, tmp_path / "ref", **kw), model=tiny_gpt(), tokenizer=TOK)
    assert ref.run(lambda ev: ref.stop() if ev.kind == "step" and ev.step == 4 else None).state == "stopped"
    assert_same_adapter(adapter_tensors(tmp_path / "es"), adapter_tensors(tmp_path / "ref"))
    # ... and the model in memory was put back to them (what a caller evaluates next)
    from peft import get_peft_model_state_dict

    in_memory = {k: v.detach() for k, v in get_peft_model_state_dict(job.peft_model).items()}
    assert_same_adapter(in_memory, adapter_tensors(tmp_path / "ref"))
    assert not (tmp_path / "es" / "checkpoints").exists()


def test_patience_without_validation_data_says_it_is_off(data_file: Path, tmp_path: Path) -> None:  # noqa: F811
    events: list = []
    st = FinetuneJob(cfg_for(data_file, tmp_path / "o", patience=1, val_fraction=0.0, max_steps=3),
                     model=tiny_gpt(), tokenizer=TOK).run(events.append)
    assert st.state == "done" and st.step == 3 and st.eval_losses == []
    assert any("early stopping is off" in e.message for e in events)
    with pytest.raises(ValueError, match="patience must be >= 0"):
        FinetuneConfig(patience=-1)


def _to_previous_format(ck: Path) -> None:
    """Rewrite a checkpoint as the fine-tuner before the shared loop wrote it (trainer_state.json; the RNG and
    the AdamW moments in one optimizer.safetensors)."""
    from llm_core.training.train_state import load_state_files

    opt, rng, state, cfg = load_state_files(ck)
    tensors = {"rng_cpu": rng["torch_cpu"]}
    for i, entry in opt["state"].items():
        for k, v in entry.items():
            tensors[f"{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    for name in ("state.json", "optimizer.json", "rng.safetensors", "optimizer.safetensors"):
        (ck / name).unlink()
    save_file(tensors, str(ck / "optimizer.safetensors"))
    (ck / "trainer_state.json").write_text(json.dumps({"step": state.step, "param_groups": opt["param_groups"],
                                                       "config": cfg}))


def test_checkpoint_of_the_previous_format_still_resumes_exactly(data_file: Path, tmp_path: Path) -> None:  # noqa: F811
    ref = FinetuneJob(cfg_for(data_file, tmp_path / "ref"), model=tiny_gpt(), tokenizer=TOK).run()
    job = FinetuneJob(cfg_for(data_file, tmp_path / "run"), model=tiny_gpt(), tokenizer=TOK)
    assert job.run(lambda ev: job.stop() if ev.kind == "step" and ev.step == 3 else None).state == "stopped"
    ck = tmp_path / "run" / "checkpoints" / "step-000003"
    _to_previous_format(ck)
    assert (ck / "trainer_state.json").is_file() and not (ck / "state.json").exists()
    events: list = []
    st = FinetuneJob(cfg_for(data_file, tmp_path / "run"), model=tiny_gpt(), tokenizer=TOK).run(events.append)
    assert st.state == "done" and st.step == 8, st.error
    assert [e.step for e in events if e.kind == "step"] == [4, 5, 6, 7, 8]
    assert ref.state == "done"
    assert_same_adapter(adapter_tensors(tmp_path / "ref"), adapter_tensors(tmp_path / "run"))


def test_a_checkpoint_without_state_is_refused_in_words(data_file: Path, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "o" / "checkpoints" / "step-000002").mkdir(parents=True)
    st = FinetuneJob(cfg_for(data_file, tmp_path / "o"), model=tiny_gpt(), tokenizer=TOK).run()
    assert st.state == "error" and "holds no training state" in st.error and "resume=False" in st.error


def test_one_device_picker() -> None:
    from finetune.device import resolve_device
    from llm_core.training.train_loop import pick_device
    from ui.models import default_device

    assert pick_device("cpu") == torch.device("cpu") == resolve_device("cpu", "fp32").device
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device() == expected and pick_device("auto", allow_mps=False).type == expected
    if not torch.cuda.is_available():
        for picker in (pick_device, resolve_device):
            with pytest.raises(ValueError, match="no CUDA GPU is available"):
                picker("cuda")


def test_staged_dir_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    from llm_core.atomic import staged_dir

    target = tmp_path / "run"
    with staged_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError, match="disk full"):
        with staged_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "one"  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left behind
    with staged_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_cli_stop_file_stops_cleanly_and_events_are_json(data_file: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    from finetune.__main__ import main as cli_main
    from tests.test_finetune_ddp import tiny_checkpoint

    model = tiny_checkpoint(tmp_path / "base")
    stop = tmp_path / "stop"
    stop.touch()  # already there: the run stops before its first step
    out = tmp_path / "o"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(cfg_for(data_file, out, model=str(model)).to_dict()))
    assert cli_main(["--config", str(cfg), "--max-steps", "5", "--events", "jsonl", "--stop-file", str(stop)]) == 0
    lines = [json.loads(x[len("@event "):]) for x in capsys.readouterr().out.splitlines() if x.startswith("@event ")]
    assert lines[-1]["kind"] == "stopped" and lines[-1]["step"] == 0 and lines[-1]["max_steps"] == 5
    info = json.loads((out / "finetune.json").read_text())
    assert info["state"] == "stopped" and info["config"]["max_steps"] == 5 and info["config"]["rank"] == 4
