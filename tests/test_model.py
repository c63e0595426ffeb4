"""GPT numerics against transformers (both families), the KV cache, attention maps, loss and input checks."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.weights.hf import from_hf_gpt2, llama_config_from_hf, llama_state_dict_from_hf

torch.set_num_threads(2)
V = 96


def hf_gpt2(attn: str = "sdpa", act: str = "gelu_new") -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=48, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn,
                     activation_function=act)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases and unit-inits norms: randomise so every tensor matters
        for n, p in model.named_parameters():
            if n.endswith("bias") or "ln_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_llama(attn: str = "sdpa", tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=48, rope_theta=500.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, attn_implementation=attn)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def ours_from(hf: torch.nn.Module) -> GPT:
    if isinstance(hf, GPT2LMHeadModel):
        return from_hf_gpt2(hf.state_dict(), hf.config.to_dict()).eval()
    cfg = llama_config_from_hf(hf.config.to_dict())
    return GPT.from_state_dict(cfg, llama_state_dict_from_hf(hf.state_dict(), cfg)).eval()


@pytest.fixture(params=["gpt2", "gpt2-exact-gelu", "llama"])
def pair(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, GPT]:
    """GPT-2 with its tanh "gelu_new", GPT-2 with exact GELU (nanoGPT's MLP), and a GQA Llama."""
    if request.param == "llama":
        return (hf := hf_llama()), ours_from(hf)
    hf = hf_gpt2(act="gelu" if request.param == "gpt2-exact-gelu" else "gelu_new")
    return hf, ours_from(hf)


def ids(B: int = 2, T: int = 21, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_logits_match_transformers(pair: tuple[torch.nn.Module, GPT]) -> None:
    hf, ours = pair
    x = ids()
    torch.testing.assert_close(ours(x)[0], hf(x).logits, rtol=1e-5, atol=1e-5)


def test_llama_untied_head_matches() -> None:
    hf = hf_llama(tie=False)
    ours = ours_from(hf)
    assert ours.lm_head.weight is not ours.tok_emb.weight
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], hf(x).logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_loss_matches_transformers(pair: tuple[torch.nn.Module, GPT]) -> None:
    hf, ours = pair
    x = ids()
    targets = x[:, 1:].clone()
    targets[0, :4] = -100  # ignored positions
    labels = x.clone()
    labels[0, 1:5] = -100
    _, loss = ours(x[:, :-1], targets)
    torch.testing.assert_close(loss, hf(x, labels=labels).loss, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_kv_cache_matches_full_sequence(pair: tuple[torch.nn.Module, GPT]) -> None:
    _, ours = pair
    x = ids(T=24)
    full, _ = ours(x)
    cache = ours.new_cache(batch_size=2, max_len=30)
    pieces, pos = [], 0
    for n in (5, 1, 1, 7, 1, 9):  # prefill, single tokens, then multi-token chunks after a non-empty cache
        logits, _ = ours(x[:, pos:pos + n], cache=cache)
        pieces.append(logits)
        pos += n
        assert cache.pos == pos
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    # last_only gives the same final row
    cache.crop(pos - 9)
    last, _ = ours(x[:, pos - 9:pos], cache=cache, last_only=True)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_attention_maps_match_transformers_eager() -> None:
    for hf in (hf_gpt2("eager"), hf_llama("eager")):
        ours = ours_from(hf)
        x = ids(B=1, T=13)
        maps = ours.attention_maps(x)
        ref = torch.stack([a[0] for a in hf(x, output_attentions=True).attentions])  # (L, nh, T, T)
        assert maps.shape == (2, 4, 13, 13)
        torch.testing.assert_close(maps, ref, rtol=1e-5, atol=1e-6)
        assert torch.all(maps.triu(1) == 0)


def test_input_checks() -> None:
    model = GPT(ModelConfig.from_preset("tiny-llama", block_size=16)).eval()
    with pytest.raises(ValueError, match="block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_cache(1, max_len=8)
    model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"\(1, T\)"):
        model.attention_maps(torch.zeros(2, 4, dtype=torch.long))


def test_init_and_param_count() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny-gpt2", n_layer=8)
    model = GPT(cfg)
    assert model.lm_head.weight is model.tok_emb.weight
    expected = sum(p.numel() for p in set(model.parameters()))
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - cfg.vocab_size * 32 - cfg.block_size * 32
    down = torch.cat([b.mlp.down_proj.weight.flatten() for b in model.blocks])
    up = torch.cat([b.mlp.up_proj.weight.flatten() for b in model.blocks])
    assert abs(up.std().item() - 0.02) < 0.002  # nanoGPT init, residual projections scaled by 1/sqrt(2 n_layer)
    assert abs(down.std().item() - 0.02 / 4) < 0.0005
    # a fresh model's loss is close to uniform guessing
    x, y = torch.randint(0, cfg.vocab_size, (2, 4, 32))
    _, loss = model(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(cfg.vocab_size)).item()) < 0.1


@torch.no_grad()
def test_bf16_keeps_rope_tables_fp32() -> None:
    hf = hf_llama()
    ours = ours_from(hf)
    ref = ours(ids())[0]
    ours = ours.to(torch.bfloat16)
    assert ours.rope is not None and ours.rope.cos.dtype == torch.float32
    out = ours(ids())[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    ours = ours.float()  # back to fp32: the tables were rebuilt, not rounded
    torch.testing.assert_close(ours.rope.cos, ours_from(hf).rope.cos)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_loss_only_equals_full_loss_and_gradients(preset: str) -> None:
    """Fine-tuning's masked loss without the (B, T, V) logits: same value, same gradients as the full path."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset(preset))
    idx = torch.randint(0, model.config.vocab_size, (3, 20))
    tgt = torch.randint(0, model.config.vocab_size, (3, 20))
    tgt[:, :12] = -100  # a masked prompt
    tgt[1, 15:] = -100  # padding
    logits, full = model(idx, tgt)
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    none, lean = model(idx, tgt, loss_only=True)
    lean.backward()
    assert none is None and logits.shape == (3, 20, model.config.vocab_size)
    torch.testing.assert_close(lean, full)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], msg=n)


def test_config_validates_activation_per_family() -> None:
    assert ModelConfig(arch="gpt2").activation == "gelu_tanh"
    assert ModelConfig(arch="llama").activation == "silu"
    with pytest.raises(ValueError, match="not available for arch 'llama'"):
        ModelConfig(arch="llama", activation="gelu")
    with pytest.raises(ValueError, match="activation 'relu'"):
        ModelConfig(arch="gpt2", activation="relu")
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(n_embd=30, n_head=4)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_training_qkv_fusion_matches_separate_projections(preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training multiplies by [Wq; Wk; Wv] once; loss and every gradient must equal three separate projections
    (GQA llama: uneven split; gpt2 with biases: the biases are fused too)."""
    from llm_core.model.attention import CausalSelfAttention

    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset(preset, bias=True) if preset == "tiny-gpt2"
                else ModelConfig.from_preset(preset)).train()
    idx = torch.randint(0, model.config.vocab_size, (3, 20))
    calls: list[int] = []
    model.blocks[0].attn.q_proj.register_forward_hook(lambda *_: calls.append(1))

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        _, loss = model(idx, idx)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fused_loss, fused = run()
    assert calls == []  # the fused path does not call the q_proj module
    monkeypatch.setattr(CausalSelfAttention, "_plain_projections", lambda self: False)
    sep_loss, sep = run()
    assert calls == [1]
    torch.testing.assert_close(fused_loss, sep_loss)
    for n in sep:
        torch.testing.assert_close(fused[n], sep[n], msg=n)


def test_wrapped_projection_is_called_not_fused() -> None:
    """A projection replaced by another module (LoRA, quantized) must run as that module during training."""
    calls: list[int] = []

    class Doubled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return 2 * super().forward(x)

    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny-gpt2")).train()
    idx = torch.randint(0, model.config.vocab_size, (2, 12))
    plain = model(idx)[0]
    attn = model.blocks[0].attn
    doubled = Doubled(attn.q_proj.in_features, attn.q_proj.out_features, bias=attn.q_proj.bias is not None)
    doubled.load_state_dict(attn.q_proj.state_dict())
    attn.q_proj = doubled
    assert not attn._plain_projections()
    assert not torch.equal(model(idx)[0], plain) and calls == [1]  # the doubled queries changed the logits


def test_cpu_bf16_training_attention_runs_in_fp32() -> None:
    """bf16 training on the CPU computes attention in fp32 (the bf16 CPU kernel's backward is slow); the
    result is bf16 again and equals fp32 attention on the same inputs, rounded once."""
    from torch.nn import functional as F

    from llm_core.model.attention import _sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    y = _sdpa(q, k, v, None, True, 0.0, False)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).bfloat16()
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, want)
    y.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0


def test_rms_norm_cpu_inference_is_bit_identical_to_f_rms_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """RMSNorm writes the float32 math out on a CPU without gradients (fewer ops per decoded token): it must be
    F.rms_norm bit for bit there, and training must still take F.rms_norm with the same values and gradients.
    (With llm_core.kernels built, inference runs their rms_norm instead: tests/test_kernels.py; off here.)"""
    from llm_core.model.norm import RMSNorm

    monkeypatch.setenv("STUDIO_KERNELS", "0")
    torch.manual_seed(0)
    for dim, shape in ((576, (1, 1)), (64, (2, 3, 5)), (32, (4, 7))):
        norm = RMSNorm(dim, eps=1e-5)
        with torch.no_grad():
            norm.weight.copy_(torch.randn(dim))
        x = torch.randn(*shape, dim) * 3
        ref = torch.nn.functional.rms_norm(x, (dim,), norm.weight.detach(), 1e-5)
        with torch.inference_mode():
            assert torch.equal(norm(x), ref)
        with torch.no_grad():
            assert torch.equal(norm(x), ref)
        xg = x.clone().requires_grad_(True)
        norm(xg).square().sum().backward()  # the training path
        xr = x.clone().requires_grad_(True)
        w = norm.weight.detach().clone().requires_grad_(True)
        torch.nn.functional.rms_norm(xr, (dim,), w, 1e-5).square().sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(norm.weight.grad, w.grad, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_one_token_attention_on_one_thread_matches_and_restores_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """One-token decoding runs its attention on one thread (attention.ONE_THREAD_KEYS): the logits equal the full
    forward's and the two-thread ones within 1e-5, and the caller's thread count is back afterwards."""
    from llm_core.model import attention

    hf = hf_llama()
    ours = ours_from(hf)
    x = ids(B=1, T=20)
    full, _ = ours(x)
    before = torch.get_num_threads()
    runs = []
    for keys in (attention.ONE_THREAD_KEYS, 0):  # one thread, then SDPA on all threads
        monkeypatch.setattr(attention, "ONE_THREAD_KEYS", keys)
        cache = ours.new_cache(batch_size=1, max_len=20)
        steps = [ours(x[:, :8], cache=cache, last_only=True)[0]]
        steps += [ours(x[:, t:t + 1], cache=cache)[0] for t in range(8, 20)]  # (1, 1, V) each
        assert torch.get_num_threads() == before
        runs.append(torch.cat(steps, dim=1))  # (1, 13, V)
    torch.testing.assert_close(runs[0], full[:, 7:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-5)


def test_a_short_prompts_elementwise_ops_run_on_one_thread_and_matmuls_on_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastpath.short_prompt_threads: in a CPU prefill without gradients the norms see one thread, the projections
    and the attention all of them; the logits are bit-identical to the all-threads forward; training, a longer
    prompt and a one-thread caller are left alone; the caller's count is back afterwards, also after an error."""
    from llm_core.model import fastpath

    ours = ours_from(hf_llama()).eval()
    seen: dict[str, list[int]] = {"norm": [], "proj": []}
    blk = ours.blocks[0]
    blk.attn_norm.register_forward_pre_hook(lambda *_: seen["norm"].append(torch.get_num_threads()))
    blk.attn.q_proj.register_forward_pre_hook(lambda *_: seen["proj"].append(torch.get_num_threads()))
    x = ids(B=1, T=20)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            trick = ours(x)[0]
            monkeypatch.setattr(fastpath, "SHORT_PROMPT_ROWS", 10)  # 20 rows: a "long" prompt now
            plain = ours(x)[0]
        assert seen == {"norm": [1, 2], "proj": [2, 2]} and torch.equal(trick, plain)
        assert torch.get_num_threads() == 2
        with torch.inference_mode():  # a batched decode step (2 rows of one token) is no prompt: all threads
            cache = ours.new_cache(2, max_len=8)
            ours(x[:, :4].expand(2, 4), cache=cache)
            seen["norm"].clear()
            ours(x[:, 4:5].expand(2, 1), cache=cache)
        assert seen["norm"] == [2]
        monkeypatch.setattr(fastpath, "SHORT_PROMPT_ROWS", 256)
        ours.train()
        ours(x)  # gradients on: training keeps every thread everywhere
        assert seen["norm"][-1] == 2
        ours.eval()
        blk.mlp.register_forward_hook(lambda *_: 1 / 0)
        with torch.inference_mode(), pytest.raises(ZeroDivisionError):
            ours(x)
        assert torch.get_num_threads() == 2 and getattr(fastpath._threads, "inside", None) is None
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("native", [False, True])
def test_a_bf16_prompt_projection_is_the_float32_product_of_its_bf16_values(monkeypatch: pytest.MonkeyPatch,
                                                                            native: bool) -> None:
    """A bf16 prompt's projection runs oneDNN's bf16 GEMM where the CPU has bf16 hardware (fastpath.NATIVE_BF16)
    and a widened float32 weight elsewhere; both give the float32 product of the bf16 values, rounded to bf16 once
    (the widened one bit for bit, the native one within its summation order)."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from llm_core.model import fastpath

    g = torch.Generator().manual_seed(0)
    m = torch.nn.Linear(96, 40).bfloat16()
    x = torch.randn(1, 12, 96, generator=g).bfloat16()  # (B, T, in): a 12-token prompt
    want = F.linear(x.float(), m.weight.float(), m.bias.float())  # (1, 12, 40) float32
    dtypes: list[torch.dtype] = []
    spy = SimpleNamespace(linear=lambda a, w, b=None: dtypes.append(w.dtype) or F.linear(a, w, b))
    monkeypatch.setattr(fastpath, "F", spy)
    monkeypatch.setattr(fastpath, "NATIVE_BF16", native)
    with torch.inference_mode():
        y = fastpath.linear(m, x)
    assert y.dtype == torch.bfloat16 and dtypes == [torch.bfloat16 if native else torch.float32]
    if native:
        torch.testing.assert_close(y.float(), want, rtol=2 ** -7, atol=1e-3)
    else:
        assert torch.equal(y, want.bfloat16())
