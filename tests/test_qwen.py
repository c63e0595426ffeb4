"""Qwen2/2.5 and Qwen3 on our engine: logits and greedy tokens against transformers from a saved HF folder (its
tokenizer and chat template too), GGUF files, export, the one decoder's cached paths, published configs built on
'meta' (SmolLM2-360M/1.7B, Qwen2.5-0.5B, Qwen3-0.6B), and unsupported architectures."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from llm_core.generation.generate import GenerationConfig, generate
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.model.norm import RMSNorm
from llm_core.tokenizer import BPETokenizer
from llm_core.tokenizer.patterns import QWEN2_PATTERN
from llm_core.weights.gguf import load_gguf
from llm_core.weights.hf import export_hf, from_hf_folder, llama_config_from_hf
from llm_core.weights.hub import load_model

torch.set_num_threads(2)

V = 320  # embedding rows; the tokenizer has fewer tokens, as in Qwen (151,936 rows for 151,665 tokens)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# The shape of Qwen2.5's template (tools branch first, whose system literal is not a whole message), written here
# with the \n escapes inside Jinja strings as in its tokenizer_config.json
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- '" + QWEN_SYSTEM + "' }}\n"
    "    {%- endif %}\n    {{- '<|im_end|>\\n' }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\n" + QWEN_SYSTEM + "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
# Qwen3's: no default system prompt (its system branch concatenates the message's content)
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0].content + "
    "'<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if not (message.role == 'system' "
    "and loop.first) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}"
)
CORPUS = ("Once upon a time, 12 cafés in Zürich served 3,456 crêpes. Don't you think they'll say it's fine?\n"
          "def f(x):\n    return x ** 2  # squares\n\nThe quick brown fox jumps over the lazy dog. ")
SAMPLES = ["Hello world", "I'm sure they'll   come in 2024!", "cafe\u0301 vs café", "  leading\n\n\ttabs\r\nx",
           "<|im_start|>user\nhi<|im_end|>\n", "数字 123456 and émoji 🙂"]


def tiny_tokenizer() -> HFTokenizer:
    """A byte-level BPE laid out like Qwen's tokenizer.json: NFC normalizer, Split(Qwen regex) + ByteLevel
    without its own regex, special tokens after the learned vocabulary."""
    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    tok.add_special_tokens(SPECIALS)
    return tok


def randomize(model: torch.nn.Module) -> None:
    """HF zero-inits biases and unit-inits norms: perturb them so every tensor's mapping matters."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)


def hf_qwen(family: str) -> torch.nn.Module:
    torch.manual_seed(0 if family == "qwen2" else 1)
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=None,
                  eos_token_id=302, initializer_range=0.2, attn_implementation="sdpa")
    if family == "qwen2":  # untied, like Qwen2.5-3B and up
        model = Qwen2ForCausalLM(Qwen2Config(rope_theta=1000.0, tie_word_embeddings=False, **common))
    else:  # head_dim 16 on a 32-wide stream of 4 heads (Qwen3-0.6B: 128 on 1024 / 16); tied like the small ones
        model = Qwen3ForCausalLM(Qwen3Config(rope_theta=5000.0, head_dim=16, tie_word_embeddings=True, **common))
    randomize(model)
    return model.eval()


def save_folder(path: Path, family: str) -> torch.nn.Module:
    """A downloaded-looking HF folder: config.json + safetensors + tokenizer.json + tokenizer_config.json."""
    hf = hf_qwen(family)
    hf.save_pretrained(path)
    fast = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer(), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())  # the template inline, as Qwen publishes it
    cfg["chat_template"] = QWEN25_TEMPLATE if family == "qwen2" else QWEN3_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return hf


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[str, Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp(request.param)
    return request.param, path, save_folder(path, request.param)


def ids(B: int = 2, T: int = 23, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- the model -----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_logits_match_transformers_from_hf_folder(folder: tuple[str, Path, torch.nn.Module]) -> None:
    family, path, hf = folder
    ours = from_hf_folder(path).eval()
    c = ours.config
    assert c.arch == "llama" and c.qkv_bias == (family == "qwen2") and c.qk_norm == (family == "qwen3")
    assert not c.bias and c.tie_embeddings == (family == "qwen3")
    assert c.head_dim == (16 if family == "qwen3" else 8)
    assert (ours.blocks[0].attn.q_proj.bias is not None) == (family == "qwen2")
    assert ours.blocks[0].attn.o_proj.bias is None
    x = ids()
    diff = (ours(x)[0] - hf(x).logits).abs().max().item()
    assert diff < 1e-4, f"{family}: max abs logits diff {diff}"


@torch.no_grad()
def test_cached_chunks_equal_one_pass(folder: tuple[str, Path, torch.nn.Module]) -> None:
    """Prefill, a chunk after the cache, then single tokens: the q/k norm and biases act the same everywhere."""
    ours = from_hf_folder(folder[1]).eval()
    x = ids(1, 20)
    full = ours(x)[0]
    cache = ours.new_cache(1, 32)
    parts = [ours(x[:, :9], cache=cache)[0], ours(x[:, 9:15], cache=cache)[0]]
    parts += [ours(x[:, t:t + 1], cache=cache)[0] for t in range(15, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def _hf_greedy(hf: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    x = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def _greedy(n: int, **kw: object) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, temperature=0.0, stop_on_eos=False, **kw)  # type: ignore[arg-type]


def test_greedy_generation_matches_transformers(folder: tuple[str, Path, torch.nn.Module]) -> None:
    family, path, hf = folder
    ours, tok = load_model(path)
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Tell me about 12 cafés."}]))
    want = _hf_greedy(hf, prompt, 12)
    assert generate(ours, tok, prompt, _greedy(12)) == want
    assert generate(ours, tok, prompt, _greedy(12, use_cache=False)) == want


def test_a_replaced_qk_norm_is_used_by_decoding(folder: tuple[str, Path, torch.nn.Module]) -> None:
    """Decoding runs the model's own modules: a q/k norm swapped for a subclass is what computes the numbers."""
    family, path, hf = folder
    if family != "qwen3":
        pytest.skip("q/k norms are Qwen3's")
    ours, tok = load_model(path)
    prompt = [5, 17, 99, 3, 200, 42]
    want = _hf_greedy(hf, prompt, 8)
    calls: list[int] = []
    nkv = ours.config.n_kv_head

    class MyNorm(RMSNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: each token's k heads, (..., hs)
            calls.append(x.numel() // (x.size(-1) * nkv))  # tokens
            return super().forward(x)

    old = ours.blocks[1].attn.k_norm
    ours.blocks[1].attn.k_norm = MyNorm(old.weight.numel(), old.eps)
    ours.blocks[1].attn.k_norm.load_state_dict(old.state_dict())
    assert generate(ours, tok, prompt, _greedy(8)) == want
    assert calls == [len(prompt)] + [1] * 7  # the prefill, then each one-token step


@torch.no_grad()
def test_checkpoint_round_trip_and_int8(folder: tuple[str, Path, torch.nn.Module], tmp_path: Path) -> None:
    """Our checkpoint keeps the Qwen options; int8 loading (biases and q/k norms beside the int8 matrices) stays
    close to fp32 through the cached decoding path."""
    from llm_core.weights.checkpoint import load_checkpoint, save_checkpoint
    from llm_core.weights.quantized_load import load_checkpoint_quantized

    family, path, hf = folder
    ours, tok = load_model(path)
    save_checkpoint(tmp_path / "ck", ours, tok)
    back, tok2 = load_checkpoint(tmp_path / "ck")
    assert back.config == ours.config and tok2.default_system_prompt == tok.default_system_prompt
    x = ids(1, 12)
    ref = hf(x).logits[:, -1]
    torch.testing.assert_close(back(x)[0][:, -1], ref, rtol=1e-4, atol=1e-4)
    q8, _ = load_checkpoint_quantized(tmp_path / "ck", "int8")
    assert (q8.blocks[0].attn.q_proj.bias is not None) == (family == "qwen2")
    got = q8(x, cache=q8.new_cache(1, 32), last_only=True)[0][:, -1]
    assert (got - ref).abs().max().item() < 0.05 * ref.abs().max().item()


# ---- tokenizer and chat template -----------------------------------------------------------------------------


def test_tokenizer_json_ids_match_transformers(folder: tuple[str, Path, torch.nn.Module]) -> None:
    _, path, _ = folder
    ref = PreTrainedTokenizerFast.from_pretrained(path)
    ours = BPETokenizer.from_tokenizer_json(path / "tokenizer.json")
    assert ours.normalizer == "NFC" and ours.pattern == QWEN2_PATTERN
    assert unicodedata.normalize("NFD", "é") != "é"
    for text in SAMPLES:
        want = ref(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text) == want, text
        assert ours.encode_python(text) == want, text
    assert ours.eos_token_id == ref.convert_tokens_to_ids("<|im_end|>") and ours.bos_token_id is None
    # our own checkpoint format keeps the normalizer and the regex
    ours.save(path / "scratch")
    back = BPETokenizer.load(path / "scratch")
    assert back.normalizer == "NFC" and back.encode(SAMPLES[2]) == ours.encode(SAMPLES[2])


def test_chat_template_matches_transformers(folder: tuple[str, Path, torch.nn.Module]) -> None:
    family, path, _ = folder
    ref = PreTrainedTokenizerFast.from_pretrained(path)
    _, tok = load_model(path)
    assert tok.chat_template == "chatml"
    assert tok.default_system_prompt == (QWEN_SYSTEM if family == "qwen2" else None)
    chats = [[{"role": "user", "content": "Hi there"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
              {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]]
    for messages in chats:
        want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tok.apply_chat_template(messages) == want


def test_chat_template_jinja_file_is_read(tmp_path: Path) -> None:
    """transformers 4.50+ saves the template as chat_template.jinja instead of inside tokenizer_config.json."""
    PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer(), eos_token="<|im_end|>").save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(QWEN25_TEMPLATE)
    tok = BPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    assert tok.chat_template == "chatml" and tok.default_system_prompt == QWEN_SYSTEM


# ---- GGUF ----------------------------------------------------------------------------------------------------


def write_qwen_gguf(path: Path, hf: torch.nn.Module, family: str, tok_json: Path) -> None:
    """A Qwen GGUF as llama.cpp's converter writes it: arch-prefixed keys, q/k rows NOT interleaved (Qwen's rope
    is NEOX, the HF layout), q/k/v biases (qwen2), attn_q_norm/attn_k_norm (qwen3), tokenizer pre 'qwen2'."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch=family)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    if family == "qwen3":
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    data = json.loads(tok_json.read_text())
    by_id = {i: t for t, i in data["model"]["vocab"].items()} | {a["id"]: a["content"] for a in data["added_tokens"]}
    special = {a["id"] for a in data["added_tokens"]}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(c.vocab_size)]
    types = [3 if i in special else (1 if i in by_id else 5) for i in range(c.vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]])
    w.add_eos_token_id(c.eos_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for k, t in hf.state_dict().items():
        if k == "lm_head.weight" and c.tie_word_embeddings:
            continue
        if k.startswith("model.layers."):
            parts = k.split(".")
            name = f"blk.{parts[2]}.{layer['.'.join(parts[3:-1])]}.{parts[-1]}"
        else:
            name = names[k]
        w.add_tensor(name, t.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@torch.no_grad()
def test_gguf_matches_transformers(folder: tuple[str, Path, torch.nn.Module], tmp_path: Path) -> None:
    family, path, hf = folder
    write_qwen_gguf(tmp_path / "m.gguf", hf, family, path / "tokenizer.json")
    ours = load_gguf(tmp_path / "m.gguf").eval()
    assert ours.config.qkv_bias == (family == "qwen2") and ours.config.qk_norm == (family == "qwen3")
    x = ids()
    assert (ours(x)[0] - hf(x).logits).abs().max().item() < 1e-4
    model, tok = load_model(tmp_path / "m.gguf")  # weights + the GGUF's own vocabulary
    ref = PreTrainedTokenizerFast.from_pretrained(path)
    for text in SAMPLES:
        assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text


# ---- export --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_export_writes_the_qwen_class(tmp_path: Path, family: str) -> None:
    """Our Qwen options cannot be written as a Llama config: export picks Qwen2ForCausalLM / Qwen3ForCausalLM."""
    torch.manual_seed(2)
    extra = dict(qkv_bias=True) if family == "qwen2" else dict(qk_norm=True, head_dim=12)
    ours = GPT(ModelConfig.from_preset("tiny-llama", **extra)).eval()
    randomize(ours)
    export_hf(ours, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf) is (Qwen2ForCausalLM if family == "qwen2" else Qwen3ForCausalLM)
    x = torch.randint(0, ours.config.vocab_size, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x)[0], rtol=1e-5, atol=1e-5)
    back = from_hf_folder(tmp_path / "hf")
    assert back.config.to_dict() == dict(ours.config.to_dict(), name="hf")


# ---- published configs, built without weights ----------------------------------------------------------------


def _expected_params(c: dict) -> int:
    """Parameter count from the published numbers: embeddings (+ an untied head), and per layer q/k/v/o (+ biases,
    q/k norms), the SwiGLU MLP and two norms, plus the final norm."""
    C, hs = c["hidden_size"], c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hs, c["num_key_value_heads"] * hs
    attn = C * q + 2 * C * kv + q * C
    if c["model_type"] == "qwen2":
        attn += q + 2 * kv
    if c["model_type"] == "qwen3":
        attn += 2 * hs
    layer = attn + 3 * C * c["intermediate_size"] + 2 * C
    emb = c["vocab_size"] * C * (1 if c["tie_word_embeddings"] else 2)
    return emb + c["num_hidden_layers"] * layer + C


PUBLISHED = {  # config.json values of the published models, and their advertised sizes
    "SmolLM2-360M": (dict(model_type="llama", hidden_size=960, num_hidden_layers=32, num_attention_heads=15,
                          num_key_value_heads=5, intermediate_size=2560, vocab_size=49152, rope_theta=100000.0,
                          max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True), 362e6),
    "SmolLM2-1.7B": (dict(model_type="llama", hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                          num_key_value_heads=32, intermediate_size=8192, vocab_size=49152, rope_theta=130000.0,
                          max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True), 1.71e9),
    "Qwen2.5-0.5B": (dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                          num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, rope_theta=1000000.0,
                          max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                          use_sliding_window=False, sliding_window=32768, max_window_layers=21), 0.494e9),
    "Qwen3-0.6B": (dict(model_type="qwen3", hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, intermediate_size=3072, vocab_size=151936,
                        rope_theta=1000000.0, max_position_embeddings=40960, rms_norm_eps=1e-6,
                        tie_word_embeddings=True, use_sliding_window=False, attention_bias=False), 0.596e9),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_build_without_weights(name: str) -> None:
    hf_cfg, advertised = PUBLISHED[name]
    cfg = llama_config_from_hf(hf_cfg, name=name)
    assert cfg.arch == "llama" and cfg.tie_embeddings and cfg.rope_theta == hf_cfg["rope_theta"]
    assert cfg.n_kv_head == hf_cfg["num_key_value_heads"] and cfg.block_size == hf_cfg["max_position_embeddings"]
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = GPT(cfg)
    assert all(p.is_meta for p in model.parameters())
    n = model.num_params()
    assert n == _expected_params(hf_cfg)
    assert abs(n - advertised) / advertised < 0.005, f"{name}: {n:,} parameters"


# ---- unsupported architectures -------------------------------------------------------------------------------


def test_unsupported_hf_folder_names_the_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3", "hidden_size": 8}))
    with pytest.raises(ValueError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "'phi3' is not supported" in msg and "llama, qwen2, qwen3" in msg


def test_unsupported_gguf_names_the_architecture(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), arch="phi3")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError) as e:
        load_model(tmp_path / "g.gguf")
    msg = str(e.value)
    assert "\n" not in msg and "'phi3' is not supported" in msg and "llama, qwen2, qwen3" in msg


def test_qwen_options_the_engine_cannot_run_are_refused() -> None:
    base = PUBLISHED["Qwen2.5-0.5B"][0]
    with pytest.raises(ValueError, match="sliding-window"):
        llama_config_from_hf(dict(base, use_sliding_window=True))
    with pytest.raises(ValueError, match="sliding-window"):
        llama_config_from_hf(dict(base, layer_types=["full_attention"] * 21 + ["sliding_attention"] * 3))
    with pytest.raises(ValueError, match="attention_bias"):
        llama_config_from_hf(dict(PUBLISHED["Qwen3-0.6B"][0], attention_bias=True))


def test_model_view_names_what_qwen_adds_to_the_llama_family():
    from llm_core.model.config import ModelConfig
    from ui.model_view import llama_family

    base = dict(arch="llama", vocab_size=64, n_layer=1, n_head=2, n_embd=32, block_size=16)
    assert llama_family(ModelConfig(**base)).endswith("no biases")
    assert "q/k/v biases (Qwen2-style)" in llama_family(ModelConfig(**base, qkv_bias=True))
    assert "RMSNorm on q and k (Qwen3, Gemma 3)" in llama_family(ModelConfig(**base, qk_norm=True))
