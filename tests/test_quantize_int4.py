"""4-bit weights (``int4``): Q4_1's scheme (w = q*d + m per group of 32), our nibble layout, and PyTorch's CPU int4
kernel as the path without our kernels (``STUDIO_KERNELS=0``; the kernel itself: tests/test_kernels_int4.py)."""

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


def kernel_reference(lin: Int4Linear, x: torch.Tensor) -> torch.Tensor:
    """What PyTorch's bf16 int4 kernel computes, in float32: bf16 activations times (q - 8) * d + zero with d and
    zero rounded to bf16, summed in float32 (the kernel then rounds the result to bf16)."""
    packed, sz = lin._torch_pack()
    eye = torch.eye(lin.in_features)
    w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, lin.group, sz.float()).t()
    y = x.bfloat16().float() @ w.t()
    return y if lin.bias is None else y + lin.bias


@pytest.fixture
def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_KERNELS", "0")


def test_q4_1_weights_come_back_as_the_same_4_bit_values() -> None:
    """The bundled SmolLM2 file is Q4_1: regrouping its (dequantized) weights must reproduce them, not round again."""
    w = q4_1_weight(48, 96)
    lin = Int4Linear.from_weight(w)
    torch.testing.assert_close(lin.dequantize(), w, rtol=0, atol=1e-6)
    q, _, _ = Int4Linear.quantize_weight(w)
    assert torch.equal(lin.unpack().int(), q)  # the nibble layout holds exactly these values
    assert torch.equal(lin.packed[0, :16], (q[0, :16] | q[0, 16:32] << 4).to(torch.uint8))  # byte j: q_j, q_{j+16}
    x = torch.randn(3, 96)
    exact = x @ w.t()
    assert (lin(x) - exact).abs().max() < 0.02 * exact.abs().max()  # rounded activations: close to fp32


def test_without_our_kernels_pytorchs_int4_kernel_runs_on_the_same_values(torch_path: None) -> None:
    w = q4_1_weight(48, 96, seed=3)
    lin = Int4Linear.from_weight(w, torch.randn(48))
    x = torch.randn(3, 96)
    y0 = lin(x) - lin.bias  # (the kernel rounds to bf16 before the bias: compare what it rounded)
    torch.testing.assert_close(y0, kernel_reference(lin, x) - lin.bias, rtol=8e-3, atol=1e-4)  # its own math
    exact = x @ w.t() + lin.bias
    assert (lin(x) - exact).abs().max() < 0.02 * exact.abs().max()
    packed, _ = lin._torch_pack()
    assert lin._torch_pack()[0] is packed  # made once, kept
    lin.packed[0, 0] ^= 0x11  # the weights change: packed again
    assert lin._torch_pack()[0] is not packed


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
    for rows in (1, 7, Int4Linear.kernel_m + 1):  # decoding, a batch, a long prefill (dequantize + GEMM)
        x = torch.randn(rows, 64)
        exact = x @ lin.dequantize().t() + src.bias
        assert (lin(x) - exact).abs().max() < 0.02 * exact.abs().max()


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


@pytest.mark.parametrize("out_f", [48, 192])
def test_pytorchs_pack_made_in_row_chunks_is_the_whole_matrix_pack(out_f: int) -> None:
    from llm_core.generation.quantize import _torch_int4_pack

    q = torch.randint(0, 16, (out_f, 96), generator=torch.Generator().manual_seed(out_f))
    want = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    assert torch.equal(_torch_int4_pack(q.to(torch.uint8)), want)


def test_int4_survives_dtype_moves() -> None:
    """``.float()`` of a model leaves the layer as it is; ``.to(bfloat16)`` casts its (d, m) pairs, which the
    layer must still run (PyTorch's path then: our kernel takes float32 pairs only)."""
    lin = Int4Linear.from_weight(q4_1_weight(32, 64, seed=1))
    assert set(lin.state_dict()) == {"packed", "scales_zeros"}
    x = torch.randn(2, 64)
    want = lin(x)
    lin.float()
    assert lin.scales_zeros.dtype == torch.float32 and lin.packed.dtype == torch.uint8
    torch.testing.assert_close(lin(x), want, rtol=0, atol=0)
    lin.to(torch.bfloat16)
    assert lin.packed.dtype == torch.uint8
    assert (lin(x) - want).abs().max() < 0.02 * want.abs().max()


@pytest.mark.slow
def test_bundled_model_in_int4_stays_within_two_percent_of_fp32() -> None:
    """What makes int4 an offered precision: the bundled SmolLM2 (Q4_1 weights, re-grouped into the same 4-bit
    values) in int4 scores the held-out Shakespeare slice within 2% of fp32's perplexity, and the first greedy
    tokens of a chat prompt agree with fp32's."""
    from llm_core.generation.precision_choice import TOLERANCE, held_out_text
    from llm_core.generation.quantize import load_quantized
    from llm_core.labs.perplexity import perplexity
    from llm_core.weights.hub import DEFAULT_MODEL

    fp32, tok = load_quantized(DEFAULT_MODEL, "fp32")
    q4, _ = load_quantized(DEFAULT_MODEL, "int4")
    assert model_mode(q4) == "int4" and isinstance(q4.blocks[0].mlp.gate_proj, Int4Linear)
    text = held_out_text()
    ids = tok.encode(text, allowed_special="none")
    p32 = perplexity(fp32, tok, text, block=len(ids) + 1, stride=len(ids) + 1).perplexity
    p4 = perplexity(q4, tok, text, block=len(ids) + 1, stride=len(ids) + 1).perplexity
    assert abs(p4 / p32 - 1) < TOLERANCE, (p32, p4)
    cfg = GenerationConfig(max_new_tokens=4, temperature=0.0, stop_on_eos=False)
    prompt = tok.encode("The capital of France is", allowed_special="none")
    assert generate(q4, tok, prompt, cfg) == generate(fp32, tok, prompt, cfg)
