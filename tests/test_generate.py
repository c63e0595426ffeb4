"""Generation: sampling helpers (against transformers' logits processors), decode loop paths, streaming text,
stop strings / EOS / stop button, greedy parity with transformers' generate, int8/bf16 inference."""

from __future__ import annotations

import threading

import pytest
import torch

from llm_core.generation.generate import GenerationConfig, GenerationStats, _TextAssembler, generate, stream_generate
from llm_core.generation.quantize import Int8Linear, quantize_model
from llm_core.generation.sampling import apply_repetition_penalty, sample, top_k_filter, top_p_filter
from llm_core.model import fastpath
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.tokenizer import BPETokenizer
from tests.tiny_models import byte_tokenizer, tiny_llama_pair

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEXT = "héllo 世界 🙂! "  # 1-, 2-, 3- and 4-byte UTF-8 characters




def greedy(n: int, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, temperature=0.0, stop_on_eos=False, **kw)


@pytest.fixture(scope="module")
def parrot() -> tuple[GPT, BPETokenizer]:
    """A tiny GPT-2 overfit on TEXT repeated: greedy decoding reproduces it byte by byte."""
    tok = byte_tokenizer()
    ids = tok.encode(TEXT * 8)[:64]
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny-gpt2", vocab_size=257, block_size=64, n_embd=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05, f"the parrot did not learn its text (loss {loss.item():.3f})"
    return model.eval(), tok


def random_model(preset: str, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig.from_preset(preset, vocab_size=257, **kw)).eval()
    for p in model.parameters():  # larger matrices than the 0.02 init: peaked, tie-free, varied logits
        if p.dim() == 2:
            p.data.normal_(0, 0.3)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Sampling helpers on hand-made logits
# ---------------------------------------------------------------------------------------------------------------


def kept(logits: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(logits.tolist()) if v != float("-inf")}


def test_top_k_keeps_exactly_the_k_largest_and_ties() -> None:
    lg = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    assert kept(top_k_filter(lg, 1)) == {1}
    assert kept(top_k_filter(lg, 3)) == {1, 2, 3}
    assert kept(top_k_filter(lg, 0)) == {0, 1, 2, 3, 4}  # off
    tie = torch.tensor([1.0, 5.0, 3.0, 5.0, 2.0])
    assert kept(top_k_filter(tie, 1)) == {1, 3}  # the k-th value's ties survive, as in transformers
    assert torch.equal(top_k_filter(lg, 3)[[1, 2, 3]], lg[[1, 2, 3]])  # survivors unchanged


def test_top_p_keeps_the_smallest_nucleus() -> None:
    lg = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert kept(top_p_filter(lg, 0.75)) == {0, 1}  # 0.5 + 0.3 >= 0.75
    assert kept(top_p_filter(lg, 0.9)) == {0, 1, 2}
    assert kept(top_p_filter(lg, 0.4)) == {0}
    assert kept(top_p_filter(lg, 0.01)) == {0}  # the top token always stays
    assert kept(top_p_filter(lg, 1.0)) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(lg, 0.0)


def test_filters_and_penalty_match_transformers_processors() -> None:
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 50, generator=g) * 3  # positive and negative logits
    ids = torch.randint(0, 50, (3, 12), generator=g)  # with repeats
    for penalty in (1.3, 0.7):
        want = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
        torch.testing.assert_close(apply_repetition_penalty(scores, ids, penalty), want, rtol=0, atol=0)
    want1 = RepetitionPenaltyLogitsProcessor(1.3)(ids[:1], scores[:1].clone())[0]
    torch.testing.assert_close(apply_repetition_penalty(scores[0], ids[0], 1.3), want1, rtol=0, atol=0)
    for k in (1, 5, 17):
        assert torch.equal(top_k_filter(scores, k), TopKLogitsWarper(k)(ids, scores.clone()))
    for p in (0.3, 0.8, 0.95):
        assert torch.equal(top_p_filter(scores, p), TopPLogitsWarper(p)(ids, scores.clone()))


def test_repetition_penalty_direction() -> None:
    lg = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(lg, torch.tensor([0, 1, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]  # seen tokens pushed down once, unseen untouched
    assert lg.tolist() == [2.0, -2.0, 1.0]  # input not modified


def test_sample_greedy_and_seeded() -> None:
    lg = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert int(sample(lg, temperature=0)) == 1
    assert int(sample(lg, 0, prev_ids=torch.tensor([1]), repetition_penalty=2.0)) == 2  # 3.0/2 < 2.9
    flat = torch.zeros(1000)
    a = [int(sample(flat, 1.0, generator=torch.Generator().manual_seed(s))) for s in range(20)]
    b = [int(sample(flat, 1.0, generator=torch.Generator().manual_seed(s))) for s in range(20)]
    assert a == b and len(set(a)) > 10
    for _ in range(50):  # top-k 2 never leaves the two best tokens
        assert int(sample(lg, 5.0, top_k=2)) in (1, 2)


# ---------------------------------------------------------------------------------------------------------------
# Decode loop
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_greedy_same_with_and_without_cache(preset: str) -> None:
    model, tok = random_model(preset), byte_tokenizer()
    prompt = list(range(40, 57))
    cached = generate(model, tok, prompt, greedy(30))
    no_cache = generate(model, tok, prompt, greedy(30, use_cache=False))
    assert len(cached) == 30
    assert cached == no_cache
    assert len(set(cached)) > 1


def cached_steps(model: GPT, idx: torch.Tensor, prefill: int, chunk_from: int) -> torch.Tensor:
    """Last-position logits after a prefill of ``prefill`` tokens, one-token steps up to ``chunk_from``, then one
    chunk of the rest (a many-token forward after a non-empty cache): (steps, B, V)."""
    cache = model.new_cache(idx.size(0), max_len=idx.size(1))

    def step(part: torch.Tensor) -> torch.Tensor:
        return model(part, cache=cache, last_only=True)[0][:, -1]  # (B, V)

    got = [step(idx[:, :prefill])] + [step(idx[:, t:t + 1]) for t in range(prefill, chunk_from)]
    return torch.stack(got + [step(idx[:, chunk_from:])])


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_cached_decoding_logits_match_full_forward(preset: str) -> None:
    """Prefill, one-token decoding (GQA heads folded, no mask) and a chunk after cached tokens (offset mask)
    give the logits of one uncached forward over the whole sequence."""
    model = random_model(preset, seed=3)
    idx = torch.randint(0, 257, (1, 24))
    with torch.inference_mode():
        full, _ = model(idx)  # (1, T, V)
        got = cached_steps(model, idx, 10, 16)
    want = torch.stack([full[:, 9], *[full[:, t] for t in range(10, 16)], full[:, 23]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_decoding_takes_attention_output_in_any_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's attention kernels may return a (B, nkv, n_rep, hs) result laid out head-major; decoding must
    read it by shape, not by memory layout (a .view there crashed every GPU sample of a GQA model)."""
    import llm_core.model.attention as attention

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def transposed_layout(q, k, v, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        y = sdpa(q, k, v, *a, **kw)
        return y.transpose(1, 2).contiguous().transpose(1, 2)  # same values and shape, other strides

    model = random_model("tiny-llama", seed=3)  # GQA: n_rep = 2
    idx = torch.randint(0, 257, (1, 12))
    with torch.inference_mode():
        full, _ = model(idx)
        monkeypatch.setattr(attention.F, "scaled_dot_product_attention", transposed_layout)
        got = cached_steps(model, idx, 8, 11)
    torch.testing.assert_close(got, torch.stack([full[:, 7], *[full[:, t] for t in range(8, 11)], full[:, 11]]),
                               rtol=1e-5, atol=1e-5)


def test_decoding_runs_projection_hooks_and_training_dropout() -> None:
    """The matmul kernels never skip a module's hooks (the Model tab's probes, LoRA's dropout) and a model in
    training mode with dropout still drops out."""
    model, tok = random_model("tiny-llama"), byte_tokenizer()
    calls: list[int] = []
    h = model.blocks[0].attn.q_proj.register_forward_hook(lambda *a: calls.append(1))
    before = generate(model, tok, [1, 2, 3], greedy(5))
    assert len(calls) == 5  # the prefill and 4 one-token steps
    h.remove()
    h = model.blocks[1].mlp.down_proj.register_forward_hook(lambda m, i, o: o * 0)  # the hook's output is used
    assert generate(model, tok, [1, 2, 3], greedy(5)) != before
    h.remove()
    train = GPT(ModelConfig.from_preset("tiny-llama", vocab_size=257, dropout=0.5)).train()
    idx = torch.randint(0, 257, (1, 8))
    with torch.no_grad():
        assert not torch.equal(train(idx)[0], train(idx)[0])


def test_seeded_sampling_reproducible() -> None:
    model, tok = random_model("tiny-llama"), byte_tokenizer()
    cfg = dict(max_new_tokens=25, temperature=1.0, top_k=50, top_p=0.95, stop_on_eos=False)
    a = generate(model, tok, [65, 66], GenerationConfig(seed=7, **cfg))
    b = generate(model, tok, [65, 66], GenerationConfig(seed=7, **cfg))
    c = generate(model, tok, [65, 66], GenerationConfig(seed=8, **cfg))
    assert a == b
    assert a != c


def test_context_limits() -> None:
    model, tok = random_model("tiny-llama"), byte_tokenizer()  # block_size 64
    st = GenerationStats()
    out = generate(model, tok, list(range(60)), greedy(50), stats=st)
    assert len(out) == 4 and st.stop_reason == "context"
    with pytest.raises(ValueError, match="context"):
        generate(model, tok, list(range(64)), greedy(5))
    with pytest.raises(ValueError, match="empty"):
        generate(model, tok, [], greedy(5))
    with pytest.raises(ValueError, match="context"):  # raised on the call, before any iteration
        stream_generate(model, tok, list(range(70)), greedy(5))
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, [1], GenerationConfig(temperature=-1))
    assert generate(model, tok, [1, 2], greedy(0)) == []


# ---------------------------------------------------------------------------------------------------------------
# Streaming text, stop strings, EOS, stop button
# ---------------------------------------------------------------------------------------------------------------


def test_text_assembler_holds_split_characters() -> None:
    tok = byte_tokenizer()
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT.encode())  # every byte its own token: 🙂 is 4 tokens
    asm = _TextAssembler(tok, [])
    pieces = [asm.push(i) for i in ids] + [asm.finish()]
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # something was held back mid-character
    bad = [0xF0, 0x9F, 65]  # truncated 4-byte sequence, then "A": same replacement as a full decode
    asm = _TextAssembler(tok, [])
    assert "".join([asm.push(i) for i in bad] + [asm.finish()]) == tok.decode(bad)


def test_stream_equals_full_decode_with_multibyte(parrot) -> None:  # noqa: ANN001
    model, tok = parrot
    prompt = tok.encode("h")
    stream = stream_generate(model, tok, prompt, greedy(40))
    pieces = list(stream)
    text = "".join(pieces)
    assert text == tok.decode(stream.token_ids)
    assert text == (TEXT * 8)[1:][:len(text)] and "🙂" in text and "世界" in text
    assert all("\ufffd" not in p for p in pieces)
    assert stream.stats.new_tokens == 40 and stream.stats.stop_reason == "max_new_tokens"
    assert stream.stats.ttft_s > 0 and stream.stats.decode_tok_s > 0
    assert generate(model, tok, prompt, greedy(40)) == stream.token_ids


def test_stop_strings_never_leak(parrot) -> None:  # noqa: ANN001
    model, tok = parrot
    prompt = tok.encode("h")
    stream = stream_generate(model, tok, prompt, greedy(40, stop=["🙂"]))
    pieces = list(stream)
    assert "".join(pieces) == "éllo 世界 "
    assert stream.stats.stop_reason == "stop_string"
    ids = generate(model, tok, prompt, greedy(40, stop=["🙂"]))
    assert tok.decode(ids) == "éllo 世界 "
    # a prefix that never completes is held back, then released: same text as without stop strings
    full = "".join(stream_generate(model, tok, prompt, greedy(20)))
    assert "".join(stream_generate(model, tok, prompt, greedy(20, stop=["世界X", "zz"]))) == full
    # the stop string may end inside a multi-byte character's tokens and start in the prompt's continuation
    assert "".join(stream_generate(model, tok, prompt, greedy(40, stop=["o 世"]))) == "éll"


def test_eos_and_stop_event(parrot) -> None:  # noqa: ANN001
    model, tok = parrot
    prompt = tok.encode("h")
    bang = tok.encode("!")[0]
    cfg = GenerationConfig(max_new_tokens=40, temperature=0, eos_token_ids=[bang])
    stream = stream_generate(model, tok, prompt, cfg)
    assert stream.text() == "éllo 世界 🙂"
    assert stream.stats.stop_reason == "eos" and bang not in stream.token_ids
    ev = threading.Event()
    stream = stream_generate(model, tok, prompt, greedy(40), stop_event=ev)
    got = []
    for piece in stream:
        got.append(piece)
        ev.set()
    assert got == ["é"]  # stopped right after the first piece ("é" is two byte tokens)
    assert stream.stats.stop_reason == "stopped" and stream.stats.new_tokens == 2


def test_stream_does_not_leak_inference_mode(parrot) -> None:  # noqa: ANN001
    model, tok = parrot
    for _ in stream_generate(model, tok, tok.encode("h"), greedy(3)):
        assert not torch.is_inference_mode_enabled()


# ---------------------------------------------------------------------------------------------------------------
# Parity with transformers' generate
# ---------------------------------------------------------------------------------------------------------------


def _hf_generate(hf, prompt: list[int], n: int, **kw) -> list[int]:  # noqa: ANN001
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0, eos_token_id=None, **kw)
    return out[0, len(prompt):].tolist()


def test_greedy_tokens_equal_transformers_llama_gqa() -> None:
    hf, ours = tiny_llama_pair()
    tok = byte_tokenizer()
    prompt = [5, 17, 99, 3, 200, 42, 7]
    want = _hf_generate(hf, prompt, 40)
    assert generate(ours, tok, prompt, greedy(40)) == want
    assert generate(ours, tok, prompt, greedy(40, use_cache=False)) == want
    want_pen = _hf_generate(hf, prompt, 40, repetition_penalty=1.5)
    assert want_pen != want
    assert generate(ours, tok, prompt, greedy(40, repetition_penalty=1.5)) == want_pen


def test_greedy_tokens_equal_transformers_gpt2() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_core.weights.hf import from_hf_gpt2

    torch.manual_seed(0)
    hcfg = GPT2Config(vocab_size=257, n_positions=64, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2)
    hf = GPT2LMHeadModel(hcfg).eval()
    ours = from_hf_gpt2(hf.state_dict(), hcfg.to_dict()).eval()
    prompt = [5, 17, 99, 3]
    assert generate(ours, byte_tokenizer(), prompt, greedy(30)) == _hf_generate(hf, prompt, 30)


# ---------------------------------------------------------------------------------------------------------------
# Precision options
# ---------------------------------------------------------------------------------------------------------------


def test_int8_linear_matches_dequantized_weights() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear.from_linear(lin)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127
    w = q.dequantize()
    assert (w - lin.weight).abs().max() <= q.scale.max() / 2 + 1e-6  # rounding error at most half a step
    with torch.no_grad():
        for rows in (1, 40):  # kernel path (bf16 activations) and dequantize path
            x = torch.randn(rows, 64)
            want = torch.nn.functional.linear(x, w, lin.bias)
            torch.testing.assert_close(q(x), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_quantized_generation_keeps_the_memorised_text(mode: str, parrot) -> None:  # noqa: ANN001
    import copy

    model, tok = parrot
    qm = quantize_model(copy.deepcopy(model), mode)
    if mode == "int8":
        assert isinstance(qm.blocks[0].attn.q_proj, Int8Linear) and isinstance(qm.lm_head, Int8Linear)
    prompt = tok.encode("h")
    text = "".join(stream_generate(qm, tok, prompt, greedy(12)))
    assert text == "".join(stream_generate(model, tok, prompt, greedy(12)))  # the memorised text survives
    assert generate(qm, tok, prompt, greedy(12)) == generate(qm, tok, prompt, greedy(12, use_cache=False))


def test_lora_adapters_are_used_by_every_path() -> None:
    from peft import LoraConfig, get_peft_model

    base, tok = random_model("tiny-llama", seed=5), byte_tokenizer()
    prompt = [3, 30, 60, 90]
    before = generate(base, tok, prompt, greedy(20))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter that changes the output
    peft_model.eval()
    inner = peft_model.base_model.model  # our GPT with LoRA-wrapped projections
    with_lora = generate(inner, tok, prompt, greedy(20))
    assert with_lora != before
    assert generate(inner, tok, prompt, greedy(20, use_cache=False)) == with_lora
    assert generate(peft_model, tok, prompt, greedy(20)) == with_lora
    merged = peft_model.merge_and_unload()
    assert generate(merged, tok, prompt, greedy(20)) == with_lora


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("threads", [2, 3])
def test_row_split_decoding_matches_model(preset: str, threads: int) -> None:
    """With several threads, one-row fp32 matmuls run as a bmm over row blocks of each weight (views, no
    copies); with 3 threads most tiny weights do not divide evenly and keep the plain matmul: both must be
    exact, with and without biases, for one sequence and a batch."""
    model = random_model(preset, seed=5)
    torch.set_num_threads(threads)
    try:
        w = model.blocks[0].mlp.up_proj.weight
        x = torch.randn(1, w.size(1))
        split = fastpath.row_split(x, w, None)
        assert (split is not None) == (w.shape[0] % threads == 0)
        if split is not None:
            torch.testing.assert_close(split, x @ w.t(), rtol=1e-6, atol=1e-6)
        assert fastpath.row_split(x, w.t().contiguous().t(), None) is None  # needs contiguous (out, in) rows
        idx = torch.randint(0, 257, (2, 20))
        with torch.inference_mode():
            full, _ = model(idx)  # (2, T, V)
            for b in (1, 2):
                got = cached_steps(model, idx[:b], 12, 19)
                want = [full[:b, t] for t in range(11, 20)]
                torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)
            for p in model.parameters():  # new storage under the same Parameter (what module.to(dtype) does)
                p.data = p.data * 1.5
            full, _ = model(idx[:1])
            got = cached_steps(model, idx[:1], 12, 19)  # the cached row blocks must follow the new weights
            torch.testing.assert_close(got, torch.stack([full[:, t] for t in range(11, 20)]), rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(1)
