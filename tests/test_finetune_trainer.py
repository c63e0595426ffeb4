"""FinetuneJob on a tiny random GPT: training lowers loss, background thread + callbacks, stop and exact resume,
checkpoint safety checks, CLI exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.__main__ import main as cli_main
from finetune.config import FinetuneConfig
from finetune.trainer import FinetuneJob, TrainEvent, lr_at
from tests.test_finetune_utils import ByteChatTokenizer, tiny_gpt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOK = ByteChatTokenizer()


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Repeat {w}", "output": f"{w} {w}"}
            for w in ["cat", "dog", "sun", "map", "pen", "cup", "box", "hat", "key", "car", "bee", "owl"]]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def cfg_for(data: Path, out: Path, **kw) -> FinetuneConfig:
    base = dict(model="tiny-test", data=str(data), out_dir=str(out), rank=4, alpha=8, dropout=0.1, lr=3e-3,
                batch_size=4, max_steps=8, eval_interval=4, checkpoint_interval=100, val_fraction=0.25, max_length=64,
                schedule="cosine", warmup_steps=2)
    base.update(kw)
    return FinetuneConfig(**base)


def adapter_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


def test_run_lowers_loss_and_writes_adapter(data_file: Path, tmp_path: Path) -> None:
    events: list[TrainEvent] = []
    cfg = cfg_for(data_file, tmp_path / "out", max_steps=12, eval_interval=6, dropout=0.0, lr=3e-2)
    job = FinetuneJob(cfg, model=tiny_gpt(), tokenizer=TOK)
    st = job.run(events.append)
    assert st.state == "done", st.error
    assert st.step == st.total_steps == 12 and len(st.losses) == 12
    assert [s for s, _ in st.eval_losses] == [0, 6, 12]
    first, last = st.losses[0][1], sum(v for _, v in st.losses[-3:]) / 3
    assert last < first * 0.7 and st.eval_losses[-1][1] < st.eval_losses[0][1] * 0.7
    assert 0 < st.trainable_params < st.total_params
    kinds = {e.kind for e in events}
    assert {"info", "step", "eval", "done"} <= kinds
    steps = [e for e in events if e.kind == "step"]
    assert all(e.tokens_per_s and e.tokens_per_s > 0 and e.eta_s is not None for e in steps)
    assert steps[-1].eta_s == 0
    assert any("trainable params" in e.message for e in events)
    out = tmp_path / "out"
    assert (out / "adapter_config.json").exists() and adapter_tensors(out)
    info = json.loads((out / "finetune.json").read_text())
    assert info["state"] == "done" and info["config"]["rank"] == 4 and info["eval_loss"] == st.eval_loss
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-test"


def test_stop_then_resume_matches_uninterrupted_run(data_file: Path, tmp_path: Path) -> None:
    # reference: 8 steps in one go (dropout on, so the RNG state must be restored too)
    ref = FinetuneJob(cfg_for(data_file, tmp_path / "ref"), model=tiny_gpt(), tokenizer=TOK).run()
    assert ref.state == "done"

    job = FinetuneJob(cfg_for(data_file, tmp_path / "run"), model=tiny_gpt(), tokenizer=TOK)

    def stop_at_3(ev: TrainEvent) -> None:
        if ev.kind == "step" and ev.step == 3:
            job.stop()

    st = job.start(stop_at_3).wait(timeout=120)
    assert st.state == "stopped" and st.step == 3
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "optimizer.safetensors").exists()
    assert json.loads((tmp_path / "run" / "finetune.json").read_text())["state"] == "stopped"

    resumed = FinetuneJob(cfg_for(data_file, tmp_path / "run"), model=tiny_gpt(), tokenizer=TOK)
    events: list[TrainEvent] = []
    st2 = resumed.run(events.append)
    assert st2.state == "done" and st2.step == 8
    assert [e.step for e in events if e.kind == "step"] == [4, 5, 6, 7, 8]
    assert any("resumed from" in e.message for e in events)
    a, b = adapter_tensors(tmp_path / "ref"), adapter_tensors(tmp_path / "run")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_resume_refuses_changed_settings(data_file: Path, tmp_path: Path) -> None:
    job = FinetuneJob(cfg_for(data_file, tmp_path / "o"), model=tiny_gpt(), tokenizer=TOK)
    st = job.run(lambda ev: job.stop() if ev.kind == "step" and ev.step == 2 else None)
    assert st.state == "stopped" and st.step == 2
    st = FinetuneJob(cfg_for(data_file, tmp_path / "o", rank=8), model=tiny_gpt(), tokenizer=TOK).run()
    assert st.state == "error" and "different settings (rank)" in st.error
    st = FinetuneJob(cfg_for(data_file, tmp_path / "o", rank=8, resume=False), model=tiny_gpt(), tokenizer=TOK).run()
    assert st.state == "done" and st.step == 8
    assert not (tmp_path / "o" / "checkpoints").exists()  # a finished run leaves only the adapter


def test_list_adapters_and_demo_preset(data_file: Path, tmp_path: Path) -> None:
    from finetune.lora import list_adapters

    assert FinetuneJob(cfg_for(data_file, tmp_path / "ads" / "one", max_steps=1), model=tiny_gpt(),
                       tokenizer=TOK).run().state == "done"
    (tmp_path / "ads" / "not-an-adapter").mkdir()
    assert list_adapters(tmp_path / "ads") == [tmp_path / "ads" / "one"]
    cfg = FinetuneConfig.for_demo(max_steps=5)
    assert cfg.data == "demo" and cfg.max_steps == 5 and cfg.lr == 2e-3


def test_bad_data_reports_error_state(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    job = FinetuneJob(cfg_for(bad, tmp_path / "o"), model=tiny_gpt(), tokenizer=TOK)
    st = job.run()
    assert st.state == "error" and "line 2" in st.error and "'output'" in st.error


def test_cli_bad_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "robot", "content": "hi"}]}\n')
    assert cli_main(["--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 1, field 'messages[0].role': unknown role 'robot'" in err
    assert cli_main(["--data", str(bad), "--rank", "0"]) == 2
    assert "rank must be >= 1" in capsys.readouterr().err


def test_lr_schedule() -> None:
    cfg = FinetuneConfig(lr=1.0, warmup_steps=2, schedule="cosine")
    assert [round(lr_at(cfg, s, 10), 4) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_at(cfg, 9, 10) < 0.05
    assert lr_at(FinetuneConfig(lr=1.0, warmup_steps=1, schedule="constant"), 9, 10) == 1.0
    assert lr_at(FinetuneConfig(lr=1.0, warmup_steps=1, schedule="linear"), 5, 11) == pytest.approx(0.6)
