"""bench/finetune.py's peer is a fair one: peft on transformers' LlamaForCausalLM holds our weights, starts from the
same LoRA layers and computes the same loss and LoRA gradients on the same batch as our LoRA step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from finetune.lora import apply_lora
from finetune.render import collate
from tests.test_finetune_utils import tiny_gpt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "finetune.py"
    spec = importlib.util.spec_from_file_location("bench_finetune", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def test_hf_peer_same_weights_lora_loss_and_gradients() -> None:
    from finetune.render import Rendered

    bench = load_bench()
    hf, diff = bench.hf_peer(tiny_gpt(), rank=4, alpha=8)
    assert diff < 1e-4  # the same weights: logits agree
    torch.manual_seed(0)
    ours = apply_lora(tiny_gpt(), rank=4, alpha=8, dropout=0.0)
    a_ours = {n.split("blocks.")[1]: p for n, p in ours.named_parameters() if "lora_" in n}
    a_hf = {n.split("layers.")[1].replace("self_attn.", "attn."): p for n, p in hf.named_parameters() if "lora_" in n}
    assert a_ours.keys() == a_hf.keys() and len(a_ours) > 0
    assert all(a_ours[k].shape == a_hf[k].shape for k in a_ours)  # the same LoRA layers, rank and targets
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the same LoRA weights (B nonzero, so gradients reach lora_A too)
        for k in a_ours:
            a_ours[k].normal_(0, 0.05, generator=gen)
            a_hf[k].copy_(a_ours[k])
    seqs = [Rendered(list(range(3, 3 + n)), [-100] * 4 + list(range(7, 3 + n)), 1) for n in (20, 13)]
    idx, tgt = collate(seqs, pad_id=0)  # (B, T)
    ours.train(), hf.train()
    _, loss = ours(idx, tgt, loss_only=True)
    loss_hf = hf(input_ids=idx, labels=tgt, shift_labels=tgt).loss
    assert abs(loss.item() - loss_hf.item()) < 1e-5
    loss.backward()
    loss_hf.backward()
    for k in a_ours:
        torch.testing.assert_close(a_ours[k].grad, a_hf[k].grad, rtol=1e-4, atol=1e-6)


def test_peak_restarts_after_loading() -> None:
    from llm_core.labs.memory import peak_rss_mb, rss_mb

    bench = load_bench()
    blob = torch.ones(64 * 2**20 // 4)  # 64 MiB resident, then freed: a load-time spike
    del blob
    if not bench.reset_peak():
        pytest.skip("no /proc/self/clear_refs here")
    assert peak_rss_mb() <= (rss_mb() or 0) + 16  # the spike no longer counts
