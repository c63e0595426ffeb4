"""`torchrun --nproc_per_node=2 -m llm_core.training` (DDP over gloo on CPU) makes the same update as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_core.model.gpt import GPT
from llm_core.training.trainer import recipe, train
from llm_core.weights.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    corpus = tmp_path / "corpus.txt"
    g = torch.Generator().manual_seed(0)
    words = "sing of arms and the man who first from the shores of troy came".split()
    corpus.write_text(" ".join(words[i] for i in torch.randint(len(words), (3000,), generator=g).tolist()))
    common = dict(data=str(corpus), data_cache=str(tmp_path / "cache"), max_steps=2, grad_accum=2, lr=1e-2,
                  warmup_steps=0, eval_interval=0, num_threads=1, dtype="float32")
    # (fp32 on both sides: on an AMX CPU "auto" picks bf16, whose rounding differs between batch splits)

    # one process: 4 sequences per micro-step, 2 micro-steps -> 8 sequences per optimizer step
    single = train(recipe("tiny", out_dir=str(tmp_path / "single"), batch_size=4, **common))

    # two processes: 2 sequences each per micro-step -> the same 8 sequences per optimizer step
    args = ["--recipe", "tiny", "--data", str(corpus), "--data-cache", str(tmp_path / "cache"), "--out",
            str(tmp_path / "ddp"), "--batch-size", "2", "--grad-accum", "2", "--max-steps", "2", "--lr", "1e-2",
            "--warmup-steps", "0", "--eval-interval", "0", "--num-threads", "1", "--dtype", "float32",
            "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "llm_core.training", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "done (max_steps): 2 steps" in proc.stdout

    m_single, _ = load_checkpoint(single.out_dir)
    m_ddp, _ = load_checkpoint(tmp_path / "ddp")
    torch.manual_seed(1337)  # the trainer's seed: the common starting point
    init = GPT(m_single.config).state_dict()
    for name, p in m_single.state_dict().items():
        q = m_ddp.state_dict()[name]
        if p.dim() >= 2:  # the check below is not vacuous (a key bias gets no gradient: softmax ignores it)
            assert (p - init[name]).abs().max() > 1e-3, f"{name} did not move"
        # Adam divides by sqrt(v): where a gradient is ~0 (k_proj.bias has none at all) float-summation noise
        # is amplified, so compare to the step size: 1e-5 is 0.1% of one lr=1e-2 step. A rank that skipped the
        # gradient all-reduce would be off by ~lr.
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
