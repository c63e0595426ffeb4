"""llm_core.kernels (issue 13): our CPU decode GEMVs against the dequantized ``F.linear``, the model's greedy
tokens with the kernels on and off, and the fallback to PyTorch's kernels when they are off or cannot be built."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from llm_core import kernels
from llm_core.generation.generate import GenerationConfig, stream_generate
from llm_core.generation.quantize import Int8Linear, quantize_model, quantize_rows
from llm_core.kernels import build
from llm_core.model import fastpath
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.tokenizer import BPETokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def q8_reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """What int8_linear computes, in float64: x quantized per block of 32 (round(x / d), d = max|x| / 127)."""
    xb = x.double().view(x.size(0), -1, 32)  # (M, in/32, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127
    qx = torch.where(d > 0, xb / d, torch.zeros_like(xb)).round()
    xq = (qx * d).view_as(x)  # the dequantized activation row
    y = xq @ (q.double() * s.double()[:, None]).T  # (M, out)
    return y if b is None else y + b.double()


@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("out_f,in_f", [(1, 32), (7, 96), (64, 576), (130, 160)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_the_q8_activation_reference(k, M: int, out_f: int, in_f: int, bias: bool) -> None:  # noqa: ANN001
    torch.manual_seed(M * 1000 + out_f + in_f)
    w = torch.randn(out_f, in_f) * torch.rand(out_f, 1) * 2
    q, s = quantize_rows(w)
    x = torch.randn(M, in_f) * 3
    x[:, 5] = 40.0  # an outlier channel: only its own block of 32 gets the coarse scale
    b = torch.randn(out_f) if bias else None
    y = k.int8_linear(x, q, s, b)
    assert y.dtype == torch.float32 and y.shape == (M, out_f)
    assert torch.equal(k.int8_linear(x.view(M, 1, in_f), q, s, b), y.view(M, 1, out_f))  # (..., in) -> (..., out)
    torch.testing.assert_close(y.double(), q8_reference(x, q, s, b), rtol=1e-5, atol=1e-4)
    # and within the activation rounding bound of the exact dequantized product: sum_i |w_i| * d_block / 2
    exact = F.linear(x.double(), q.double() * s.double()[:, None], None if b is None else b.double())
    d = x.double().view(M, -1, 32).abs().amax(-1) / 127  # (M, in/32)
    bound = (q.double().abs() * s.double()[:, None]).view(out_f, -1, 32).sum(-1) @ d.T / 2  # (out, M)
    assert ((y.double() - exact).abs() <= bound.T + 1e-4).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,out_f,in_f", [(1, 5, 7), (1, 64, 576), (3, 33, 100), (4, 9, 8)])
def test_float_linear_matches_f_linear(k, dtype: torch.dtype, M: int, out_f: int, in_f: int) -> None:  # noqa: ANN001
    torch.manual_seed(out_f + in_f)
    w = torch.randn(out_f, in_f).to(dtype)
    x, b = torch.randn(M, in_f).to(dtype).float(), torch.randn(out_f).to(dtype)
    want = F.linear(x.double(), w.double(), b.double())
    for bias in (b, None):
        y = k.float_linear(x, w, bias)  # float32 accumulation, float32 out for a float32 x
        assert y.dtype == torch.float32 and y.shape == (M, out_f)
        torch.testing.assert_close(y.double(), want if bias is not None else want - b.double(), rtol=1e-5, atol=1e-4)
    x3 = x.to(dtype).view(M, 1, in_f)  # (B, 1, in) as a decode step sends it: (B, 1, out) in x's dtype
    y3 = k.float_linear(x3, w, b)
    assert y3.dtype == dtype and y3.shape == (M, 1, out_f)
    assert torch.equal(y3.view(M, out_f), k.float_linear(x3.float().view(M, in_f), w, b).to(dtype))


def test_rows_do_not_depend_on_the_batch_or_the_thread_count(k) -> None:  # noqa: ANN001
    """Batched decoding must give each row what it would get alone; every output is summed in one fixed order."""
    torch.manual_seed(0)
    q, s = quantize_rows(torch.randn(200, 96))
    w16 = torch.randn(200, 96).bfloat16()
    x = torch.randn(4, 96)
    one = [k.int8_linear(x[i:i + 1], q, s, None) for i in range(4)]
    assert torch.equal(torch.cat(one), k.int8_linear(x, q, s, None))
    assert torch.equal(torch.cat([k.float_linear(x[i:i + 1], w16, None) for i in range(4)]), k.float_linear(x, w16, None))
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(k.int8_linear(x, q, s, None), torch.cat(one))
    finally:
        torch.set_num_threads(n)


def test_prepare_in_background_loads_the_same_module(k) -> None:  # noqa: ANN001
    t = kernels.prepare_in_background()
    t.join(timeout=120)
    assert not t.is_alive() and kernels.cpu_kernels() is k


def torch_int8(m: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """Int8Linear's PyTorch path for a few rows: ``_weight_int8pack_mm`` with bf16 activations, then the bias."""
    y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, m.in_features).bfloat16(), m.qweight, m.scale_c).float()
    return (y if m.bias is None else y + m.bias).view(*x.shape[:-1], m.out_features)


def test_int8linear_uses_the_kernel_and_falls_back_where_it_must(k, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from llm_core.generation import quantize

    monkeypatch.setattr(quantize, "NATIVE_BF16", False)  # (a CPU with bf16 hardware: see the bf16 GEMM test below)
    torch.manual_seed(1)
    lin = torch.nn.Linear(64, 48)
    m = Int8Linear.from_linear(lin)
    x = torch.randn(1, 2, 64)
    y = m(x)  # the kernel: q8 activations
    torch.testing.assert_close(y.view(2, 48).double(), q8_reference(x.view(2, 64), m.qweight, m.scale, m.bias))
    assert not torch.equal(y, torch_int8(m, x))
    monkeypatch.setenv("STUDIO_KERNELS", "0")  # switched off: PyTorch's kernel, bit for bit
    assert kernels.cpu_kernels() is None
    assert torch.equal(m(x), torch_int8(m, x))
    monkeypatch.delenv("STUDIO_KERNELS")
    odd = Int8Linear.from_linear(torch.nn.Linear(48, 16))  # in % 32 != 0: PyTorch's kernel
    x48 = torch.randn(1, 1, 48)
    assert torch.equal(odd(x48), torch_int8(odd, x48))
    odder = Int8Linear.from_linear(torch.nn.Linear(40, 16))  # in % 16 != 0: dequantize (PyTorch's kernel is wrong)
    x40 = torch.randn(1, 1, 40)
    torch.testing.assert_close(odder(x40), F.linear(x40.bfloat16(), odder.dequantize(torch.bfloat16)).float()
                               + odder.bias, rtol=0.02, atol=0.02)
    prompt = torch.randn(1, 20, 64)  # a short prompt's prefill runs the kernel too
    assert torch.equal(m(prompt), k.int8_linear(prompt, m.qweight, m.scale, m.bias))
    many = torch.randn(1, Int8Linear.kernel_m + 1, 64)  # a long prompt: dequantize + float32 GEMM
    assert torch.equal(m(many), F.linear(many, m.dequantize(), m.bias))
    m.qweight[3, 7] = -128  # outside the sign trick's range: PyTorch's kernel again (weight version changed)
    assert torch.equal(m(x), torch_int8(m, x))
    many = torch.randn(1, Int8Linear.small_m + 1, 64)  # PyTorch's kernel only up to small_m rows: then a GEMM
    assert torch.equal(m(many), F.linear(many, m.dequantize(), m.bias))


def test_weights_made_in_inference_mode_use_the_kernel(k) -> None:  # noqa: ANN001
    """Inference tensors have no version counter: the weight check must not need one."""
    torch.manual_seed(2)
    with torch.inference_mode():
        m = Int8Linear.from_linear(torch.nn.Linear(64, 32))
        x = torch.randn(1, 1, 64)
        y = m(x)
    torch.testing.assert_close(y.view(1, 32).double(), q8_reference(x.view(1, 64), m.qweight, m.scale, m.bias))


def test_a_failed_build_falls_back_and_says_why_once(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def broken(folder):  # noqa: ANN001, ANN202
        raise RuntimeError("Error building extension 'llm_gemv'\nc++: not found")

    monkeypatch.delenv("STUDIO_KERNELS", raising=False)
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setattr(build, "_import_built", lambda folder: None)
    monkeypatch.setattr(build, "_compile", broken)
    with caplog.at_level(logging.WARNING, logger="llm_core.kernels.build"):
        assert kernels.cpu_kernels(wait=True) is None and kernels.cpu_kernels() is None
    assert kernels.unavailable_reason() == "build failed: RuntimeError: c++: not found"
    assert sum("PyTorch's kernels" in r.getMessage() for r in caplog.records) == 1
    m = Int8Linear.from_linear(torch.nn.Linear(64, 32))
    x = torch.randn(1, 1, 64)
    assert torch.equal(m(x), torch_int8(m, x))


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset("tiny-llama", vocab_size=257, block_size=64, n_embd=64, intermediate_size=96)
    model = GPT(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3) if p.dim() == 2 else p.data.uniform_(0.5, 1.5)
    return model


def greedy_ids(model: GPT, tok: BPETokenizer, prompt: list[int], cfg: GenerationConfig) -> list[int]:
    stream = stream_generate(model, tok, prompt, cfg)
    for _ in stream:
        pass
    return stream.token_ids


PROMPT = [3, 30, 60, 90, 120]


def on_and_off(model: GPT, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor]:
    """(greedy ids, the same with STUDIO_KERNELS=0, the first position's logits on, off) for a tiny model."""
    tok = BPETokenizer(pattern="gpt2", special_tokens={"<|endoftext|>": 256})
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.0, stop_on_eos=False)
    out = []
    for setting in ("1", "0"):
        monkeypatch.setenv("STUDIO_KERNELS", setting)
        with torch.inference_mode():
            logits = model(torch.tensor([PROMPT[:1]]))[0]  # one row: the decode kernels
        out.append((greedy_ids(model, tok, PROMPT, cfg), logits))
    (on, logits_on), (off, logits_off) = out
    return on, off, logits_on, logits_off


@pytest.mark.parametrize("mode", ["fp32", "bf16", "int8"])
def test_greedy_tokens_with_kernels_on_and_off(k, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(fastpath, "OWN_KERNEL_DTYPES", (torch.float32, torch.bfloat16))  # (off by default)
    lin = torch.nn.Linear(64, 40).requires_grad_(False)
    x1 = torch.randn(1, 1, 64)
    assert torch.equal(fastpath.linear(lin, x1), k.float_linear(x1, lin.weight, lin.bias))  # it runs the kernel
    model = quantize_model(copy.deepcopy(tiny_model()), mode)
    on, off, logits_on, logits_off = on_and_off(model, monkeypatch)
    same = len(on) if mode != "int8" else 8  # int8: both round the activations (q8 blocks vs bf16); a near-tie
    assert on[:same] == off[:same]           # of this random model flips at token 9
    tol = {"fp32": 1e-4, "bf16": 0.05, "int8": 0.05}[mode] * logits_off.abs().max().item()
    assert (logits_on - logits_off).abs().max().item() <= tol


def test_the_precision_choice_is_measured_again_when_the_kernels_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached "fastest precision" measured without our int8 kernel must not outlive it (and vice versa)."""
    from llm_core.generation.precision_choice import machine_identity

    monkeypatch.setenv("STUDIO_KERNELS", "0")
    off = machine_identity()["kernels"]
    monkeypatch.setenv("STUDIO_KERNELS", "1")
    on = machine_identity()["kernels"]
    assert off == "off"
    if build._cpu_reason() is None:  # an AVX2 x86-64 CPU: the build's identity, a hash of source and flags
        assert on.startswith("gemv-") and on == build._build_dir().name


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_long_prompts_weight_conversions_are_exact(k, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A long prompt's GEMM runs in float32 on the widened bf16 / dequantized int8 weight: the kernels' versions
    must give PyTorch's values bit for bit, odd sizes and any thread count included."""
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in ((1536, 577), (3, 5), (70000,)):
            w = torch.randn(shape).bfloat16()
            assert torch.equal(k.widen_bf16(w), w.float())
        q, s = quantize_rows(torch.randn(1000, 580))
        assert torch.equal(k.dequantize_int8(q, s), q.float() * s[:, None])
        m = Int8Linear(q, s)
        assert torch.equal(m.dequantize(), q.float() * s[:, None])  # the module's own path uses it
        lin = torch.nn.Linear(580, 300).bfloat16().requires_grad_(False)
        x = torch.randn(1, 20, 580).bfloat16()  # a prefill of 20 rows: float32 GEMM on the widened weight
        monkeypatch.setattr(fastpath, "NATIVE_BF16", False)  # (a CPU without bf16 hardware)
        want = F.linear(x.float(), lin.weight.float(), lin.bias.float()).bfloat16()
        assert torch.equal(fastpath.linear(lin, x), want)
    finally:
        torch.set_num_threads(n)
    with pytest.raises(RuntimeError, match="bfloat16"):
        k.widen_bf16(torch.randn(4))


def test_a_decode_does_not_wait_for_the_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    """Without a finished build, the first call starts the compiler in the background and returns None at once
    (PyTorch's kernels meanwhile: a first reply, or an API request, must not stall for 20-80 s); wait=True blocks
    until the module is there, and then every call returns it."""
    import threading

    release = threading.Event()

    class Built:
        @staticmethod
        def supported() -> bool:
            return True

    def slow_compile(folder):  # noqa: ANN001, ANN202
        assert release.wait(60), "the test never let the build finish"
        return Built

    monkeypatch.delenv("STUDIO_KERNELS", raising=False)
    monkeypatch.setenv("LLM_STUDIO_CACHE", str(tmp_path))  # no earlier build here
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setattr(build, "_compile", slow_compile)
    monkeypatch.setattr(build, "_cpu_reason", lambda: None)
    assert kernels.cpu_kernels() is None and kernels.cpu_kernels() is None  # building: not waited for
    builder = build._state["builder"]
    assert builder.is_alive()
    m = Int8Linear.from_linear(torch.nn.Linear(64, 32))
    x = torch.randn(1, 1, 64)
    with torch.inference_mode():
        assert torch.equal(m(x), torch_int8(m, x))  # decoding goes on with PyTorch's kernel
    release.set()
    assert kernels.cpu_kernels(wait=True) is Built and kernels.cpu_kernels() is Built
    builder.join(timeout=60)
    assert not builder.is_alive()


def test_the_build_adds_avx512_only_where_the_cpu_has_all_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_flags(): AVX2 + FMA always; the AVX512 F/BW/VL/DQ/VNNI flags where /proc/cpuinfo lists every one of
    them, unless STUDIO_KERNELS_AVX512=0 (the flags are part of the build folder's name, so each build has its own)."""
    monkeypatch.delitem(build._state, "flags", raising=False)
    monkeypatch.setattr(build, "_cpu_has", lambda names: True)
    assert build.build_flags() == build.FLAGS + build.AVX512_FLAGS
    monkeypatch.delitem(build._state, "flags")
    monkeypatch.setenv("STUDIO_KERNELS_AVX512", "0")
    assert build.build_flags() == build.FLAGS
    monkeypatch.delitem(build._state, "flags")
    monkeypatch.delenv("STUDIO_KERNELS_AVX512")
    monkeypatch.setattr(build, "_cpu_has", lambda names: "avx512_vnni" not in names)  # AVX512 without VNNI
    assert build.build_flags() == build.FLAGS


# --- the elementwise ops of a decode step: RMSNorm and RoPE ----------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H", [(1, 1, 9), (2, 7, 3), (1, 40, 2)])
def test_rope_kernel_is_bit_exact(k, dtype: torch.dtype, B: int, T: int, H: int) -> None:  # noqa: ANN001
    from llm_core.model.attention import RotaryEmbedding, apply_rope

    rot = RotaryEmbedding(64, 256, 10000.0)
    x = (torch.randn(B, T, H, 64) * 3).to(dtype)  # (B, T, H, hs): q or k before its transpose
    cos, sin = rot(17, T, dtype)  # (T, hs) each
    want = apply_rope(x.transpose(1, 2), cos, sin)  # (B, H, T, hs)
    assert torch.equal(k.rope(x, cos, sin).transpose(1, 2), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 5, 64), (3, 24)])
def test_rms_norm_kernel_matches_the_pytorch_math(k, dtype: torch.dtype, shape: tuple[int, ...],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from llm_core.model import norm

    torch.manual_seed(0)
    n = norm.RMSNorm(shape[-1], eps=1e-5).to(dtype).requires_grad_(False)
    n.weight.normal_()
    x = (torch.randn(*shape) * 2).to(dtype)
    calls, real = [], k.rms_norm
    monkeypatch.setattr(k, "rms_norm", lambda *a: calls.append(1) or real(*a))
    got = n(x)
    assert calls == [1]  # the kernel ran
    monkeypatch.setattr(norm, "elementwise_kernels", lambda rows, *ts: None)
    want = n(x)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape and calls == [1]
    if dtype == torch.bfloat16:  # rounded to bf16 after the float math: at most one bf16 ulp, rarely
        ulp = want.float().abs() * 2 ** -7
        assert ((got.float() - want.float()).abs() <= ulp).all()
        assert (got != want).float().mean() < 0.01
    else:  # float32: only the order of the sum of squares differs
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)


def test_a_decode_step_runs_the_elementwise_kernels(k, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    calls = {"rms_norm": 0, "rope": 0}
    for name in calls:
        real = getattr(k, name)

        def counted(*a, _real=real, _name=name):  # noqa: ANN001, ANN202
            calls[_name] += 1
            return _real(*a)
        monkeypatch.setattr(k, name, counted)
    model = tiny_model()
    with torch.inference_mode():
        cache = model.new_cache(1, 16)
        model(torch.tensor([PROMPT]), cache=cache)  # prefill: norms and rotations; SDPA's causal path
        assert calls["rope"] == 2 * model.config.n_layer
        model(torch.tensor([[7]]), cache=cache)  # one token
    n = model.config.n_layer
    assert calls == {"rms_norm": 2 * (2 * n + 1), "rope": 4 * n}


def test_an_int8_prompt_runs_a_bf16_gemm_where_the_cpu_multiplies_bf16(k, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from llm_core.generation import quantize

    lin = torch.nn.Linear(96, 40).requires_grad_(False)
    m = Int8Linear.from_linear(lin)
    w_bf16 = k.dequantize_int8_bf16(m.qweight, m.scale)
    assert torch.equal(w_bf16, (m.qweight.float() * m.scale[:, None]).to(torch.bfloat16))  # one rounding
    x = torch.randn(2, m.native_bf16_m, 96)  # a prompt of native_bf16_m tokens
    want = F.linear(x.to(torch.bfloat16), w_bf16).float() + lin.bias
    monkeypatch.setattr(quantize, "NATIVE_BF16", True)
    with torch.inference_mode():
        got = m(x)
        assert got.dtype == torch.float32 and torch.equal(got, want)  # the bf16 GEMM, not the int8 kernel
        assert torch.equal(m(x[:, :1]), k.int8_linear(x[:, :1], m.qweight, m.scale, m.bias))  # decode: the kernel
        monkeypatch.setattr(quantize, "NATIVE_BF16", False)
        exact = m(x)  # elsewhere: our int8 kernel for the prompt too
    assert torch.equal(exact, k.int8_linear(x, m.qweight, m.scale, m.bias))
    assert (got - exact).abs().max() < 0.05 * exact.abs().max()  # both close to the float layer


def test_kernels_enabled_follows_the_environment_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDIO_KERNELS", raising=False)
    assert build.enabled()
    for off in ("0", "off", " False ", "no"):
        monkeypatch.setenv("STUDIO_KERNELS", off)
        assert not build.enabled()
    monkeypatch.setenv("STUDIO_KERNELS", "1")
    assert build.enabled()
