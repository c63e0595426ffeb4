"""`torchrun --nproc_per_node=2 -m finetune` (DDP over gloo on CPU): the same adapter as one process that
accumulates the same global batch; only rank 0 writes files and reports."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune import FinetuneConfig, FinetuneJob

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["cat", "dog", "sun", "map", "pen", "cup", "box", "hat", "key", "car", "bee", "owl", "ant", "fox", "elk", "yak"]


def tiny_checkpoint(folder: Path, block_size: int = 96) -> Path:
    from llm_core.model.config import ModelConfig
    from llm_core.model.gpt import GPT
    from llm_core.tokenizer import CharTokenizer
    from llm_core.weights.checkpoint import save_checkpoint

    tok = CharTokenizer.train(string.printable)
    torch.manual_seed(0)
    save_checkpoint(folder, GPT(ModelConfig.from_preset("tiny-llama", vocab_size=tok.vocab_size, block_size=block_size)), tok)
    return folder


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "base")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Repeat {w}", "output": f"{w} {w}"}) + "\n" for w in WORDS))
    common = dict(model=str(model), data=str(data), rank=4, alpha=8.0, dropout=0.0, lr=1e-2, batch_size=2,
                  max_steps=3, warmup_steps=1, eval_interval=2, checkpoint_interval=2, val_fraction=0.25, max_length=64,
                  precision="fp32", seed=3)

    # one process: 2 sequences per micro-step, 2 micro-steps -> 4 sequences per optimizer step
    single = FinetuneJob(FinetuneConfig(out_dir=str(tmp_path / "single"), grad_accum=2, **common)).run()
    assert single.state == "done", single.error

    # two processes: 2 sequences each, no accumulation -> the same 4 sequences per optimizer step
    args = ["--model", str(model), "--data", str(data), "--out", str(tmp_path / "ddp"), "--rank", "4", "--alpha", "8",
            "--dropout", "0", "--lr", "1e-2", "--batch-size", "2", "--grad-accum", "1", "--max-steps", "3",
            "--warmup-steps", "1", "--eval-interval", "2", "--save-every", "2", "--val-fraction", "0.25",
            "--max-length", "64", "--precision", "fp32", "--seed", "3", "--events", "jsonl"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "finetune", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    events = [json.loads(line[len("@event "):]) for line in proc.stdout.splitlines() if line.startswith("@event ")]
    # only rank 0 reports: each step once, the checkpoint at step 2 once, one end
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3]
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [2]
    assert [e["kind"] for e in events if e["kind"] in ("done", "stopped", "error")] == ["done"]
    assert any("2 processes" in e["message"] for e in events if e["kind"] == "info")
    info = json.loads((tmp_path / "ddp" / "finetune.json").read_text())
    assert info["state"] == "done" and info["processes"] == 2 and info["step"] == 3
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "single")
                                                                          .iterdir())  # no stray files from rank 1
    # the same losses, reported as the mean over both processes' tokens
    losses = [e["loss"] for e in events if e["kind"] == "step"]
    assert losses == pytest.approx([v for _, v in single.losses], rel=1e-5)

    a = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        if "lora_B" in name:  # not vacuous: B starts at zero, so it moved only by training
            assert a[name].abs().max() > 1e-3, f"{name} did not move"
        # Adam moves each weight by about lr (1e-2) per step whatever the gradient's scale, so a rank that trained
        # on the wrong sequences or skipped the gradient all-reduce is off by ~1e-2. Summing the two halves of the
        # batch in another order changes gradients by ~1e-7 relative, which Adam amplifies only where a gradient
        # is ~0 (never beyond one step's size): 1e-5 is 0.1% of one step.
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_app_runs_two_processes_as_a_watched_torchrun_job_and_stops_it(registry, home, tmp_path: Path) -> None:
    import time

    from ui.finetune_tab import checkpoint_step, start_finetune, stop_job
    from ui.jobs import JobManager
    from ui.runs import load_record

    data = tmp_path / "greet.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"say hi {i}", "output": "hi!"}) for i in range(24)))
    jobs = JobManager()
    msg = start_finetune("upload", str(data), "auto", None, "pair", 4, 8, 0.0, ["q_proj", "v_proj"], 1e-2, 1, 500,
                         2, 1, 64, 0, False, 0, 2, registry=registry, jobs=jobs)
    assert "2 processes" in msg, msg
    job = jobs.current()
    deadline = time.time() + 300
    while job.running and job.step < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert "Stopping" in stop_job("finetune", jobs)
    assert jobs.wait(job, timeout=300)
    snap = job.snapshot()
    assert snap["status"] == "stopped", snap["log"]
    steps = [m["step"] for m in snap["metrics"] if m["split"] == "train"]
    assert steps == list(range(1, len(steps) + 1)) and 2 <= len(steps) < 500  # each step once: rank 0 reports
    assert any("2 processes" in line for line in snap["log"])
    out = home / "adapters" / "pair"
    assert checkpoint_step(out) == len(steps) and (out / "adapter_config.json").is_file()  # resumable
    assert load_record("finetune", "pair").config["processes"] == 2  # Resume starts 2 processes again


@pytest.mark.slow
def test_readme_single_node_command_runs_as_written(tmp_path: Path) -> None:
    """The README's one-machine torchrun command, run through bash as printed, with a tiny model, two steps and
    a temporary output appended (argparse keeps the last value)."""
    import re
    import shlex

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Fine-tuning on several processes", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    single = [c for c in commands if "--standalone" in c]
    assert len(single) == 1 and "--nproc_per_node=2 -m finetune" in single[0]
    assert all(all(f in c for f in ("--nnodes=2", "--node_rank=", "--master_addr=")) for c in commands if c not in
               single)
    model = tiny_checkpoint(tmp_path / "base", block_size=320)  # the demo's prompts are ~250 characters
    extra = ["--model", str(model), "--max-steps", "2", "--batch-size", "2", "--max-length", "320",
             "--out", str(tmp_path / "adapters" / "demo-ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLM_STUDIO_HOME": str(tmp_path / "home")}
    proc = subprocess.run(["bash", "-c", single[0] + " " + shlex.join(extra)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "done: step 2/2" in proc.stdout
    assert (tmp_path / "adapters" / "demo-ddp" / "adapter_config.json").is_file()
