"""4-bit weights (``int4``): Q4_1's scheme (w = q*d + m per group of 32) through PyTorch's CPU int4 kernel."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from llm_core.generation.generate import GenerationConfig, generate
from llm_core.generation.quantize import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    model_mode,
    parse_mode,
    quantize_model,
    weight_bytes,
)
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.tokenizer import BPETokenizer

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"),
                                 reason="this PyTorch has no CPU int4 kernel")]


def q4_1_weight(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    """A weight already on a Q4_1 grid, as llama.cpp writes it: per group of 32, q in 0..15 with 0 and 15 used."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out_f, in_f // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # Q4_1 maps a group's min to 0 and its max to 15
    d = torch.rand(out_f, in_f // 32, 1, generator=g) * 0.02 + 1e-3
    m = torch.randn(out_f, in_f // 32, 1, generator=g) * 0.1
    return (q * d + m).reshape(out_f, in_f)


def test_q4_1_weights_come_back_as_the_same_4_bit_values() -> None:
    """The bundled SmolLM2 file is Q4_1: regrouping its (dequantized) weights must reproduce them, not round again."""
    w = q4_1_weight(48, 96)
    lin = Int4Linear.from_weight(w)
    torch.testing.assert_close(lin.dequantize(), w, rtol=0, atol=1e-6)
    x = torch.randn(3, 96)
    torch.testing.assert_close(lin(x), x @ w.t(), rtol=1e-5, atol=1e-5)


def test_any_weight_is_within_half_a_step_and_biases_are_kept() -> None:
    torch.manual_seed(0)
    src = nn.Linear(64, 48, bias=True)
    src.weight.data.normal_(0, 0.5)
    lin = Int4Linear.from_linear(src)
    q, d, _ = Int4Linear.quantize_weight(src.weight)
    assert q.min() >= 0 and q.max() <= 15
    err = (lin.dequantize() - src.weight).abs().reshape(48, 2, 32)  # per group of 32
    assert (err <= d[..., None] / 2 + 1e-5).all()
    assert lin.packed.dtype == torch.uint8 and lin.packed.numel() == 48 * 64 // 2  # two weights per byte
    for rows in (1, 7):  # decoding and a prefill
        x = torch.randn(rows, 64)
        torch.testing.assert_close(lin(x), x @ lin.dequantize().t() + src.bias, rtol=1e-5, atol=1e-5)


def test_int4_model_keeps_embedding_int8_and_generates_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny-llama", vocab_size=257, n_embd=64, intermediate_size=128)).eval()
    q4 = quantize_model(copy.deepcopy(model), "int4")
    assert parse_mode("q4") == "int4" and model_mode(q4) == "int4"
    assert isinstance(q4.blocks[0].attn.q_proj, Int4Linear) and isinstance(q4.blocks[1].mlp.down_proj, Int4Linear)
    assert isinstance(q4.lm_head, Int8Linear) and isinstance(q4.tok_emb, Int8Embedding)  # the tied table, in int8
    assert sum(weight_bytes(q4).values()) < 0.5 * sum(weight_bytes(model).values())
    idx = torch.randint(0, 257, (1, 20))
    with torch.inference_mode():
        want, got = model(idx)[0], q4(idx)[0]
    assert (got - want).abs().max() < 0.2 * want.abs().max()
    tok = BPETokenizer(pattern="gpt2", special_tokens={"<|endoftext|>": 256})
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0, stop_on_eos=False)
    cached = generate(q4, tok, [3, 30, 60], cfg)
    cfg.use_cache = False
    assert cached == generate(q4, tok, [3, 30, 60], cfg)  # prefill/decode kernels agree with full forwards


def test_a_width_the_groups_do_not_divide_stays_int8() -> None:
    model = GPT(ModelConfig.from_preset("tiny-llama", vocab_size=257, n_embd=48, n_head=4, n_kv_head=2,
                                        intermediate_size=80)).eval()
    q4 = quantize_model(model, "int4")
    assert isinstance(q4.blocks[0].mlp.down_proj, Int8Linear)  # in = 80: not a multiple of 32
    assert isinstance(q4.blocks[0].mlp.up_proj, Int8Linear)  # in = 48: neither
    assert isinstance(q4.blocks[0].attn.k_proj, Int8Linear)  # out = 2 heads of 12 = 24: not a multiple of 16
