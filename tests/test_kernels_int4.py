"""llm_core.kernels' Q4_1 GEMV (``int4_linear``, issue 13): against the float math it stands for, in
:class:`Int4Linear` with the kernels on and off, and the model's greedy tokens either way."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llm_core import kernels
from llm_core.generation.quantize import Int4Linear, quantize_model
from tests.test_kernels import PROMPT, on_and_off, tiny_model

pytestmark = [pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
              pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"),
                                 reason="this PyTorch has no CPU int4 kernel")]


def q8(x: torch.Tensor) -> torch.Tensor:
    """x (M, in) as int4_linear sees it, in float64: quantized per block of 32, round(x / d), d = max|x| / 127."""
    xb = x.double().view(x.size(0), -1, 32)  # (M, in/32, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127
    return (torch.where(d > 0, xb / d, torch.zeros_like(xb)).round() * d).view_as(x)


def q4_reference(x: torch.Tensor, lin: Int4Linear) -> torch.Tensor:
    """What int4_linear computes, in float64: q8 activations times q * d + m, plus the bias."""
    sz = lin.scales_zeros.double()  # (out, G, 2)
    w = (lin.unpack().double().view(lin.out_features, -1, 32) * sz[..., :1] + sz[..., 1:]).view(lin.out_features, -1)
    y = q8(x) @ w.T  # (M, out)
    return y if lin.bias is None else y + lin.bias.double()


def torch_int4(lin: Int4Linear, x: torch.Tensor) -> torch.Tensor:
    """Int4Linear's PyTorch path: ``_weight_int4pack_mm_for_cpu`` with bf16 activations on its own pack."""
    packed, sz = lin._torch_pack()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, lin.in_features).bfloat16(), packed, 32, sz).float()
    return (y if lin.bias is None else y + lin.bias).view(*x.shape[:-1], lin.out_features)


@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("out_f,in_f", [(1, 32), (7, 96), (64, 576), (130, 160), (9, 1056)])  # (long rows: 1 by 1)
@pytest.mark.parametrize("bias", [False, True])
def test_int4_linear_matches_the_q8_activation_reference(k, M: int, out_f: int, in_f: int, bias: bool) -> None:  # noqa: ANN001
    torch.manual_seed(M * 1000 + out_f + in_f)
    w = torch.randn(out_f, in_f) * torch.rand(out_f, 1) * 2 + torch.randn(out_f, 1)  # rows off zero: m matters
    lin = Int4Linear.from_weight(w, torch.randn(out_f) if bias else None)
    x = torch.randn(M, in_f) * 3
    x[:, 5] = 40.0  # an outlier channel: only its own block of 32 gets the coarse scale
    y = k.int4_linear(x, lin.packed, lin.scales_zeros, lin.bias)
    assert y.dtype == torch.float32 and y.shape == (M, out_f)
    assert torch.equal(k.int4_linear(x.view(M, 1, in_f), lin.packed, lin.scales_zeros, lin.bias), y.view(M, 1, out_f))
    torch.testing.assert_close(y.double(), q4_reference(x, lin), rtol=1e-5, atol=1e-4)
    # and within the activation rounding bound of the exact product with the 4-bit weight: sum_i |w_i| * d_block / 2
    wq = lin.dequantize().double()
    exact = F.linear(x.double(), wq, None if lin.bias is None else lin.bias.double())
    d = x.double().view(M, -1, 32).abs().amax(-1) / 127  # (M, in/32)
    bound = wq.abs().view(out_f, -1, 32).sum(-1) @ d.T / 2  # (out, M)
    assert ((y.double() - exact).abs() <= bound.T + 1e-4).all()


def test_int4_linear_rejects_a_mismatched_layout(k) -> None:  # noqa: ANN001
    lin = Int4Linear.from_weight(torch.randn(16, 64))
    x = torch.randn(1, 64)
    with pytest.raises(RuntimeError, match="scales"):
        k.int4_linear(x, lin.packed, lin.scales_zeros[:, :1].contiguous(), None)
    with pytest.raises(RuntimeError, match="in_features"):
        k.int4_linear(torch.randn(1, 32), lin.packed, lin.scales_zeros, None)


def test_int4_rows_do_not_depend_on_the_batch_or_the_thread_count(k) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    lin = Int4Linear.from_weight(torch.randn(200, 96))
    x = torch.randn(4, 96)
    one = torch.cat([k.int4_linear(x[i:i + 1], lin.packed, lin.scales_zeros, None) for i in range(4)])
    assert torch.equal(one, k.int4_linear(x, lin.packed, lin.scales_zeros, None))
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(k.int4_linear(x, lin.packed, lin.scales_zeros, None), one)
    finally:
        torch.set_num_threads(n)


def test_int4linear_uses_the_kernel_and_falls_back_where_it_must(k, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    lin = torch.nn.Linear(128, 48)
    lin.weight.data.normal_(0, 0.5)
    m = Int4Linear.from_linear(lin)
    x = torch.randn(1, 3, 128)
    on = m(x)  # the kernel: q8 activations
    torch.testing.assert_close(on.view(3, 48).double(), q4_reference(x.view(3, 128), m), rtol=1e-5, atol=1e-4)
    monkeypatch.setenv("STUDIO_KERNELS", "0")  # switched off: PyTorch's int4 kernel, bit for bit
    assert kernels.cpu_kernels() is None
    off = m(x)
    assert torch.equal(off, torch_int4(m, x)) and not torch.equal(on, off)
    exact = F.linear(x, m.dequantize(), m.bias)
    for y in (on, off):  # both round the activations (q8 blocks vs bf16): close to the exact product
        assert (y - exact).abs().max() < 0.02 * exact.abs().max()
    monkeypatch.delenv("STUDIO_KERNELS")
    prompt = torch.randn(1, 20, 128)  # a short prompt's prefill runs the kernel too
    assert torch.equal(m(prompt), k.int4_linear(prompt, m.packed, m.scales_zeros, m.bias))
    many = torch.randn(1, Int4Linear.kernel_m + 1, 128)  # a long prompt: dequantize + float32 GEMM
    torch.testing.assert_close(m(many), F.linear(many, m.dequantize(), m.bias), rtol=1e-6, atol=1e-5)
    m.scales_zeros = m.scales_zeros.bfloat16()  # not the kernel's float32: PyTorch's path, on the new values
    assert torch.equal(m(x), torch_int4(m, x))


def test_greedy_tokens_with_the_int4_kernel_on_and_off(k, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    model = quantize_model(copy.deepcopy(tiny_model()), "int4")
    assert isinstance(model.blocks[0].mlp.down_proj, Int4Linear) and isinstance(model.blocks[0].attn.k_proj, Int4Linear)
    on, off, logits_on, logits_off = on_and_off(model, monkeypatch)
    assert (logits_on - logits_off).abs().max().item() <= 0.05 * logits_off.abs().max().item()
    # both round the activations (q8 blocks vs bf16), so this random model's near-ties may go either way: up to
    # where they part the tokens agree, and where they part the two best logits are within that rounding
    i = next((j for j, (a, b) in enumerate(zip(on, off)) if a != b), len(on))
    if i < len(on):
        with torch.inference_mode():
            top2 = model(torch.tensor([PROMPT + off[:i]]))[0][0, -1].topk(2).values
        assert top2[0] - top2[1] < 0.2, (i, top2)
    assert i >= 4  # (at this seed: 5)
