"""Gemma 3 on our engine: logits and greedy tokens against transformers' Gemma3ForCausalLM on tiny random configs
(sliding-window layers with a prompt longer than the window, linear RoPE scaling, logit softcapping), the KV cache
against a full forward, HF folder / checkpoint / GGUF round trips with the SentencePiece-style tokenizer, the
published 270M / 1B / 4B configs built on 'meta', and the options the engine refuses."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from llm_core.generation.generate import GenerationConfig, eos_token_ids, generate
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.tokenizer import SentencePieceTokenizer
from llm_core.weights.checkpoint import load_checkpoint, save_checkpoint
from llm_core.weights.gguf import load_gguf
from llm_core.weights.hf import export_hf, from_hf_folder, gemma3_config_from_hf
from llm_core.weights.hub import load_model
from llm_core.weights.quantized_load import load_checkpoint_quantized
from tests.test_tokenizer_spm import SPECIALS, TRICKY, gemma_like_pieces, write_tokenizer_json

torch.set_num_threads(2)

V = 512  # embedding rows; the tokenizer has fewer pieces (as Gemma 3: 262,208 rows for 262,144 pieces)
WINDOW = 4
LAYERS = ["sliding_attention", "full_attention", "sliding_attention"]
VARIANTS = {  # 1B-like: plain RoPE on both layer types; 4B-like: linear scaling x8 on the full layers, a softcap
    "1b_like": dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
    "4b_like": dict(rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
                    final_logit_softcapping=3.0),
}


def randomize(model: torch.nn.Module) -> None:
    """Gemma zero-inits its (1 + w) norms: perturb them so every norm's mapping matters."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.3)


def hf_gemma(variant: str, **over: object) -> Gemma3ForCausalLM:
    torch.manual_seed(0 if variant == "1b_like" else 1)
    kw = dict(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=len(LAYERS), num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, layer_types=LAYERS, sliding_window=WINDOW, query_pre_attn_scalar=24,
        max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=2, eos_token_id=1,
        pad_token_id=0, attn_implementation="sdpa", **VARIANTS[variant])
    cfg = Gemma3TextConfig(**{**kw, **over})
    model = Gemma3ForCausalLM(cfg)
    randomize(model)
    return model.eval()


def save_folder(path: Path, variant: str) -> Gemma3ForCausalLM:
    """A downloaded-looking Gemma 3 folder: config.json + safetensors + Gemma-style tokenizer.json + template."""
    hf = hf_gemma(variant)
    hf.save_pretrained(path)
    write_tokenizer_json(path)
    return hf


@pytest.fixture(scope="module", params=list(VARIANTS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[str, Path, Gemma3ForCausalLM]:
    path = tmp_path_factory.mktemp(request.param)
    return request.param, path, save_folder(path, request.param)


def ids(B: int = 2, T: int = 23, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- the model -----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_logits_match_transformers_from_hf_folder(folder: tuple[str, Path, Gemma3ForCausalLM]) -> None:
    """23 tokens through sliding layers of window 4: the window mask, both RoPE bases, the (1 + w) sandwich norms,
    GeGLU, the embedding scale and the query_pre_attn_scalar all have to be right."""
    variant, path, hf = folder
    ours = from_hf_folder(path).eval()
    c = ours.config
    assert c.arch == "llama" and c.activation == "gelu_tanh" and c.qk_norm and c.tie_embeddings
    assert c.norm_unit_offset and c.sandwich_norm and c.scale_embeddings and c.query_pre_attn_scalar == 24
    assert c.layer_types == LAYERS and c.sliding_window == WINDOW
    assert (c.rope_theta, c.rope_local_theta) == (1e6, 1e4)
    assert c.rope_scaling_factor == (8.0 if variant == "4b_like" else None)
    assert c.final_logit_softcap == (3.0 if variant == "4b_like" else None)
    assert [b.attn.sliding_window for b in ours.blocks] == [WINDOW, None, WINDOW]
    x = ids()
    want = hf(x).logits
    diff = (ours(x)[0] - want).abs().max().item()
    assert diff < 1e-4, f"{variant}: max abs logits diff {diff}"
    if variant == "4b_like":
        assert want.abs().max().item() < 3.0  # the softcap is in play


@torch.no_grad()
def test_kv_cache_decoding_equals_one_pass(folder: tuple[str, Path, Gemma3ForCausalLM]) -> None:
    """Prefill, a chunk after the cache, then single tokens far past the window: the same logits as one pass."""
    ours = from_hf_folder(folder[1]).eval()
    x = ids(1, 20)
    full = ours(x)[0]
    cache = ours.new_cache(1, 32)
    parts = [ours(x[:, :9], cache=cache)[0], ours(x[:, 9:15], cache=cache)[0]]
    parts += [ours(x[:, t:t + 1], cache=cache)[0] for t in range(15, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_sliding_layers_keep_only_their_window(folder: tuple[str, Path, Gemma3ForCausalLM]) -> None:
    """30 tokens decoded one by one (and in chunks longer than the window) through a cache whose sliding layers
    are rings of 4 positions: the same logits as transformers' full forward, while the full layer keeps all 30."""
    _, path, hf = folder
    ours = from_hf_folder(path).eval()
    x = ids(1, 30, seed=5)
    want = hf(x).logits  # (1, 30, V)
    cache = ours.new_cache(1, 64)
    got = torch.cat([ours(x[:, t:t + 1], cache=cache)[0] for t in range(30)], dim=1)
    assert (got - want).abs().max().item() < 1e-4
    assert cache.ring_windows == {0: WINDOW, 2: WINDOW}
    assert [cache.k[i].size(2) for i in range(3)] == [WINDOW, cache.capacity, WINDOW] and cache.capacity >= 30
    for chunks in ([7, 1, 9, 2, 11], [3, 3, 3, 21], [30]):  # prefill past the window, chunks after it
        cache, parts, t = ours.new_cache(1, 64), [], 0
        for n in chunks:
            parts.append(ours(x[:, t:t + n], cache=cache)[0])
            t += n
        assert (torch.cat(parts, dim=1) - want).abs().max().item() < 1e-4, chunks
        assert all(cache.k[i].size(2) == cache.v[i].size(2) == WINDOW for i in (0, 2))
    with pytest.raises(ValueError, match="sliding-window layers keep only the last 4"):
        cache.crop(20)
    cache.crop(29)  # one step back is still in the rings
    torch.testing.assert_close(ours(x[:, 29:], cache=cache)[0], want[:, 29:], rtol=1e-4, atol=1e-4)
    with torch.inference_mode():  # a plain cache's rings joining a per-row (batched) cache, as the scheduler runs
        plain = ours.new_cache(1, 64)
        ours(x[:, :20], cache=plain)
        rows = ours.new_cache(0, per_row=True)
        rows.add_rows(plain)
        for t in (20, 21):
            got = ours(x[:, t:t + 1], cache=rows, last_only=True)[0][:, -1]
            torch.testing.assert_close(got, want[:, t], rtol=1e-4, atol=1e-4)


def test_batched_rows_keep_only_their_window(folder: tuple[str, Path, Gemma3ForCausalLM]) -> None:
    """Batched decoding (a per-row cache): rows of their own lengths step one token at a time far past the window,
    rows leave, and a short row joins in a slot a departed row left stale; every step's logits are transformers' for
    that row's sequence, while the sliding layers hold rings of 4 positions per row."""
    from llm_core.generation.batching import prefill_rows

    _, path, hf = folder
    ours = from_hf_folder(path).eval()
    seqs = [ids(1, n, seed=10 + k)[0] for k, n in enumerate((11, 19, 16))]
    with torch.no_grad():
        want = [hf(s.view(1, -1)).logits[0] for s in seqs]  # (n, V) each
    with torch.inference_mode():
        cache = ours.new_cache(0, per_row=True)
        _, first = prefill_rows(ours, [seqs[0][:1].tolist(), seqs[1][:6].tolist()])  # left-padded together
        cache.add_rows(first)
        active, t = [0, 1], {0: 1, 1: 6}
        for step in range(24):  # row 0 leaves after 10 steps, row 1 after 13, row 2 (joining at 10) after 24
            if step == 10:  # a third request joins, prefilled alone, shorter than the window
                cache.add_rows(prefill_rows(ours, [seqs[2][:2].tolist()])[1])
                active.append(2)
                t[2] = 2
            tokens = torch.stack([seqs[r][t[r]] for r in active]).view(-1, 1)  # (B, 1)
            got = ours(tokens, cache=cache, last_only=True)[0][:, -1]  # (B, V)
            for b, r in enumerate(active):
                torch.testing.assert_close(got[b], want[r][t[r]], rtol=1e-4, atol=1e-4)
                t[r] += 1
            for b in reversed(range(len(active))):  # a finished row leaves; the last row moves into its place
                if t[active[b]] == len(seqs[active[b]]):
                    cache.remove_row(b)
                    active[b] = active[-1]
                    active.pop()
            assert cache.ring_windows == {0: WINDOW, 2: WINDOW} and cache.k[0].size(2) == WINDOW
        assert not active and t == {0: 11, 1: 19, 2: 16}


def _hf_greedy(hf: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    x = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def _greedy(n: int, **kw: object) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, temperature=0.0, stop_on_eos=False, **kw)  # type: ignore[arg-type]


def test_greedy_generation_matches_transformers(folder: tuple[str, Path, Gemma3ForCausalLM]) -> None:
    """Through load_model: the SentencePiece tokenizer, Gemma's chat template, cached and uncached decoding."""
    _, path, hf = folder
    ours, tok = load_model(path)
    assert isinstance(tok, SentencePieceTokenizer) and tok.chat_template == "gemma"
    prompt = tok.encode(tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Tell me about 12 cafés."}]))
    assert prompt[0] == 2 and len(prompt) > 2 * WINDOW
    want = _hf_greedy(hf, prompt, 12)
    assert generate(ours, tok, prompt, _greedy(12)) == want
    assert generate(ours, tok, prompt, _greedy(12, use_cache=False)) == want
    assert tok.special_tokens["<end_of_turn>"] in eos_token_ids(tok)  # a chat reply ends with its turn


def test_plain_completion_starts_with_bos(folder: tuple[str, Path, Gemma3ForCausalLM], tmp_path: Path) -> None:
    """A Gemma tokenizer.json whose post-processor adds <bos> (as the published one): a plain (non-chat) prompt,
    through the API's /v1/completions encoding, gets <bos> as transformers' tokenizer(text) gives it, and greedy
    tokens from it match transformers'. The folder's tokenizer without that post-processor adds none."""
    from types import SimpleNamespace

    from api.openai_api import completion_prompt
    from api.schemas import CompletionRequest

    _, path, hf = folder
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((path / f).read_bytes())
    write_tokenizer_json(tmp_path, bos=True)
    ours, tok = load_model(tmp_path)
    assert tok.add_bos_token and not load_model(path)[1].add_bos_token
    text = "Tell me about the theory of 12 cafés"
    want = PreTrainedTokenizerFast.from_pretrained(tmp_path)(text)["input_ids"]
    ids = completion_prompt(CompletionRequest(prompt=text), SimpleNamespace(tokenizer=tok))
    assert ids == want and ids[0] == 2 and ids[1:] == tok.encode(text)
    assert generate(ours, tok, ids, _greedy(8)) == _hf_greedy(hf, want, 8)


@torch.no_grad()
def test_export_and_checkpoint_round_trip(folder: tuple[str, Path, Gemma3ForCausalLM], tmp_path: Path) -> None:
    """Export writes a Gemma3ForCausalLM transformers loads with our logits; our checkpoint keeps every option."""
    variant, path, hf = folder
    ours, tok = load_model(path)
    export_hf(ours, tmp_path / "hf", tokenizer=tok)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(back) is Gemma3ForCausalLM
    x = ids(1, 17)
    want = hf(x).logits
    torch.testing.assert_close(back(x).logits, want, rtol=1e-5, atol=1e-5)
    assert from_hf_folder(tmp_path / "hf").config.to_dict() == dict(ours.config.to_dict(), name="hf")
    fast = PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    assert fast("the theory 中", add_special_tokens=False)["input_ids"] == tok.encode("the theory 中")
    save_checkpoint(tmp_path / "ck", ours, tok)
    ck, tok2 = load_checkpoint(tmp_path / "ck")
    assert ck.config == ours.config and isinstance(tok2, SentencePieceTokenizer)
    torch.testing.assert_close(ck(x)[0], want, rtol=1e-4, atol=1e-4)
    if variant == "1b_like":  # int8 weights beside the float norms, through the cached path: close to fp32
        q8, _ = load_checkpoint_quantized(tmp_path / "ck", "int8")
        got = q8(x, cache=q8.new_cache(1, 32), last_only=True)[0][:, -1]
        assert (got - want[:, -1]).abs().max().item() < 0.05 * want[:, -1].abs().max().item()


# ---- GGUF ----------------------------------------------------------------------------------------------------


def write_gemma_gguf(path: Path, hf: Gemma3ForCausalLM) -> None:
    """A Gemma 3 GGUF as llama.cpp's converter writes it: gguf's own tensor names for gemma3, every norm weight
    stored as 1 + w, q/k rows as in HF (no interleave), no output.weight (tied), the vocabulary as pieces + scores
    + token types (tokenizer model 'llama'), padded to the embedding rows."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch="gemma3")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["full_attention"]["rope_theta"])
    full = c.rope_parameters["full_attention"]
    if full["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_sliding_window(c.sliding_window)
    w.add_sliding_window_pattern([t == "sliding_attention" for t in c.layer_types])
    pieces, scores = gemma_like_pieces()
    types = [3] * len(SPECIALS) + [6] * 256 + [1] * (len(pieces) - len(SPECIALS) - 256)
    types[3] = 2
    pad = V - len(pieces)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces + [f"<unused{k}>" for k in range(pad)])
    w.add_token_scores(scores + [0.0] * pad)
    w.add_token_types(types + [5] * pad)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_add_space_prefix(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, c.num_hidden_layers)
    for k, t in hf.state_dict().items():
        if k == "lm_head.weight":
            continue
        a = t.numpy().astype(np.float32)
        if k.endswith("norm.weight"):
            a = a + 1.0
        w.add_tensor(names.get_name(k, try_suffixes=(".weight",)), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@torch.no_grad()
def test_gguf_matches_transformers(folder: tuple[str, Path, Gemma3ForCausalLM], tmp_path: Path) -> None:
    variant, path, hf = folder
    write_gemma_gguf(tmp_path / "m.gguf", hf)
    ours = load_gguf(tmp_path / "m.gguf").eval()
    c = ours.config
    assert c.layer_types == LAYERS and c.sliding_window == WINDOW and c.rope_local_theta == 1e4
    assert c.query_pre_attn_scalar == 16  # llama.cpp's scale: 1/sqrt(head_dim) below 27B
    assert c.rope_scaling_factor == (8.0 if variant == "4b_like" else None)
    ref = from_hf_folder(path).eval()  # the same model with HF's query_pre_attn_scalar (24): set llama.cpp's
    for b in ref.blocks:
        b.attn.scale = 16 ** -0.5
    x = ids()
    if variant == "4b_like":
        ours.config.final_logit_softcap = 3.0  # not in GGUF metadata (None in every published Gemma 3)
    assert (ours(x)[0] - ref(x)[0]).abs().max().item() < 1e-4
    _, tok = load_model(tmp_path / "m.gguf")
    want = PreTrainedTokenizerFast.from_pretrained(path)
    assert isinstance(tok, SentencePieceTokenizer) and tok.bos_token_id == 2
    for text in TRICKY:
        assert tok.encode(text) == want(text, add_special_tokens=False)["input_ids"], repr(text)


@torch.no_grad()
def test_gguf_export_round_trip(folder: tuple[str, Path, Gemma3ForCausalLM], tmp_path: Path) -> None:
    """Our GGUF export of a Gemma 3 (as "gemma3": 1 + w norms, sliding pattern, both RoPE bases, linear scaling;
    the vocabulary as pieces + scores + types) loads back through our GGUF loader with the same logits (decoded
    through the sliding rings too) and the same ids. What a GGUF cannot say is refused in words."""
    from llm_core.weights.export import write_gguf

    variant, path, _ = folder
    hf = hf_gemma(variant, query_pre_attn_scalar=16, final_logit_softcapping=None)  # what llama.cpp can express
    hf.save_pretrained(tmp_path / "src")
    write_tokenizer_json(tmp_path / "src", bos=True)
    ours, tok = load_model(tmp_path / "src")
    res = write_gguf(ours, tok, tmp_path / "m.gguf", "f32", name="tiny-gemma")
    assert res.arch == "llama" and res.n_tensors == len(ours.state_dict()) - 1  # tied: no output.weight
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert reader.fields["general.architecture"].contents() == "gemma3"
    back, tok2 = load_model(tmp_path / "m.gguf")
    assert back.config.layer_types == LAYERS and back.config.sliding_window == WINDOW
    assert back.config.rope_scaling_factor == ours.config.rope_scaling_factor
    x = ids()
    want = hf(x).logits
    assert (back(x)[0] - want).abs().max().item() < 1e-4
    cache = back.new_cache(2, 64)
    got = torch.cat([back(x[:, t:t + 1], cache=cache)[0] for t in range(x.size(1))], dim=1)
    assert (got - want).abs().max().item() < 1e-4
    assert isinstance(tok2, SentencePieceTokenizer) and tok2.add_bos_token and tok2.chat_template == "gemma"
    assert (tok2.bos_token_id, tok2.eos_token_id, tok2.unk_token_id) == (2, 1, 3)
    for text in TRICKY:
        assert tok2.encode(text) == tok.encode(text), repr(text)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok2.apply_chat_template(msgs) == tok.apply_chat_template(msgs)
    # what a GGUF cannot say: HF's query_pre_attn_scalar 24 (llama.cpp uses the head size 16), a logit softcap
    ref, _ = load_model(path)
    with pytest.raises(ValueError, match="query_pre_attn_scalar=24.*--format hf"):
        write_gguf(ref, tok, tmp_path / "bad.gguf", "f32")
    state = tok.to_state()
    state["merges"] = state["merges"][::-1]  # merge ranks no piece scores can give
    with pytest.raises(ValueError, match="rebuilds from piece scores"):
        write_gguf(ours, SentencePieceTokenizer.from_state(state), tmp_path / "bad.gguf", "f32")
    assert not (tmp_path / "bad.gguf").exists()


def test_llama_cpp_runs_the_gemma3_export_when_installed(tmp_path: Path) -> None:
    """llama.cpp itself (llama-cpp-python, when installed): our exported gemma3 GGUF tokenizes a plain prompt as we
    do (BOS included) and gives transformers' logits within 1% of their spread (its KV cache is f16)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llm_core.weights.export import write_gguf

    hf = hf_gemma("4b_like", query_pre_attn_scalar=16, final_logit_softcapping=None)
    hf.save_pretrained(tmp_path / "src")
    write_tokenizer_json(tmp_path / "src", bos=True)
    ours, tok = load_model(tmp_path / "src")
    res = write_gguf(ours, tok, tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(res.path), n_ctx=64, logits_all=True, verbose=False)
    text = "the theory of 12 cafés"
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok.encode_prompt(text)
    x = ids(1, 23)
    llm.eval(x[0].tolist())
    theirs = torch.tensor(np.asarray(llm.scores[:23]))
    with torch.no_grad():
        want = hf(x).logits[0]
    assert (theirs - want).abs().max().item() <= 0.01 * want.std().item()
    del llm


# ---- published configs, built without weights ----------------------------------------------------------------

_TEXT = dict(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], attention_bias=False,
             attn_logit_softcapping=None, final_logit_softcapping=None, head_dim=256,
             hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768, num_attention_heads=4,
             num_key_value_heads=1, query_pre_attn_scalar=256, rms_norm_eps=1e-6, rope_local_base_freq=10000.0,
             rope_scaling=None, rope_theta=1000000.0, sliding_window=512, vocab_size=262144, bos_token_id=2,
             pad_token_id=0)
PUBLISHED = {  # config.json values of the published models (4B: only what its text_config lists) and sizes
    "gemma-3-270m": (dict(_TEXT, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, eos_token_id=1,
                          _sliding_window_pattern=6,
                          layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3), 268_098_176),
    "gemma-3-1b-it": (dict(_TEXT, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                           eos_token_id=[1, 106], sliding_window_pattern=6), 999_885_952),
    "gemma-3-4b-it": (dict(model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"],
                           text_config=dict(hidden_size=2560, intermediate_size=10240, model_type="gemma3_text",
                                            num_hidden_layers=34, rope_scaling={"factor": 8.0, "rope_type": "linear"},
                                            sliding_window=1024), eos_token_id=[1, 106]), 3_880_263_168),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_build_without_weights(name: str) -> None:
    hf_cfg, size = PUBLISHED[name]
    cfg = gemma3_config_from_hf(hf_cfg, name=name)
    text = hf_cfg.get("text_config", hf_cfg)
    with torch.device("meta"):
        model = GPT(cfg)
        ref = Gemma3ForCausalLM(Gemma3TextConfig(**{k: v for k, v in text.items() if k != "architectures"}))
    n = model.num_params()
    assert n == size == sum(p.numel() for p in ref.parameters()), f"{name}: {n:,}"  # tied: counted once
    assert cfg.layer_types == ref.config.layer_types and cfg.sliding_window == ref.config.sliding_window
    assert cfg.is_sliding(0) and not cfg.is_sliding(5) and cfg.eos_token_id == 1
    assert cfg.rope_scaling_factor == (8.0 if name == "gemma-3-4b-it" else None)


# ---- what the engine refuses ---------------------------------------------------------------------------------


def test_unsupported_gemma_options_are_refused() -> None:
    base = PUBLISHED["gemma-3-1b-it"][0]
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        gemma3_config_from_hf(dict(base, attn_logit_softcapping=50.0))
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        gemma3_config_from_hf(dict(base, use_bidirectional_attention=True))
    with pytest.raises(ValueError, match="RoPE scaling 'yarn'"):
        gemma3_config_from_hf(dict(base, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig(arch="llama", n_layer=2, n_head=2, n_embd=16, layer_types=["sliding_attention", "full_attention"])
    with pytest.raises(ValueError, match="not gpt2 ones"):
        ModelConfig(arch="gpt2", n_layer=2, n_head=2, n_embd=16, sandwich_norm=True)


def test_unsupported_architecture_message_lists_gemma(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3", "hidden_size": 8}))
    with pytest.raises(ValueError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "'phi3' is not supported" in msg and "gemma3_text, gemma3" in msg
