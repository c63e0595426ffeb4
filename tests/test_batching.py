"""Dynamic batching (llm_core.generation.batching): concurrent streams share decode steps and give what they give
alone; rows at their own lengths run through the model's own forward (a per-row KVCache)."""

from __future__ import annotations

import threading

import pytest
import torch

from llm_core.generation.batching import BatchScheduler, prefill_rows
from llm_core.generation.generate import GenerationConfig, generate, stream_generate
from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.model.kv_cache import KVCache
from tests.tiny_models import byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PROMPTS = ["a", "Hello there, how", "The quick brown fox jumps over", "xyz 123 ", "é"]


def random_model(preset: str, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig.from_preset(preset, vocab_size=257, **kw)).eval()
    for p in model.parameters():  # peaked, tie-free logits (as tests/test_generate.py does)
        if p.dim() == 2:
            p.data.normal_(0, 0.3)
    return model


def greedy(n: int, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, temperature=0.0, stop_on_eos=False, **kw)


def run_together(sched: BatchScheduler, prompts: list[list[int]], cfgs: list[GenerationConfig]) -> list:
    """Submit every request before any is read, so they decode in the same batched steps."""
    streams = [sched.submit(p, c) for p, c in zip(prompts, cfgs, strict=True)]
    texts = [s.text() for s in streams]
    return list(zip(texts, streams, strict=True))


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_batched_greedy_equals_alone(preset: str) -> None:
    model, tok = random_model(preset), byte_tokenizer()
    prompts = [tok.encode(p) for p in PROMPTS]
    lengths = [20, 7, 25, 1, 13]  # rows leave at different steps
    alone = [generate(model, tok, p, greedy(n)) for p, n in zip(prompts, lengths, strict=True)]
    sched = BatchScheduler(model, tok)
    out = run_together(sched, prompts, [greedy(n) for n in lengths])
    assert [s.token_ids for _, s in out] == alone
    assert [t for t, _ in out] == [tok.decode(a) for a in alone]
    assert sched.max_batch >= 3  # they really shared steps (the 1-token row ends at its prefill)
    assert sched.steps < sum(lengths)
    assert [s.stats.new_tokens for _, s in out] == lengths
    assert all(s.stats.stop_reason == "max_new_tokens" for _, s in out)


def test_batched_step_logits_match_single_rows() -> None:
    """The (B, 1) forward with per-row positions gives each row's own single-sequence logits."""
    model = random_model("tiny-llama", seed=3)
    seqs = [torch.randint(0, 257, (n,)) for n in (3, 11, 6)]

    class SmallCache(KVCache):
        initial = 4  # both rows and positions must grow

    c = model.config
    cache = SmallCache(c.n_layer, 0, c.n_kv_head, c.block_size, c.head_dim, per_row=True)
    for s in seqs:
        kv = model.new_cache(1)
        with torch.inference_mode():
            model(s[:-1].view(1, -1), cache=kv)
        cache.add_rows(kv)
    with torch.inference_mode():
        got = model(torch.stack([s[-1] for s in seqs]).view(3, 1), cache=cache, last_only=True)[0][:, -1]  # (3, V)
        want = torch.cat([model(s.view(1, -1))[0][:, -1] for s in seqs])  # (3, V)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert cache.lens[:3].tolist() == [3, 11, 6]
    cache.remove_row(0)  # the last row moves into its place
    assert cache.lens[:2].tolist() == [6, 11] and cache.pos == 11


FAMILIES = {"gpt2": ("tiny-gpt2", {}), "llama": ("tiny-llama", {}),
            "qwen2": ("tiny-llama", {"qkv_bias": True}), "qwen3": ("tiny-llama", {"qkv_bias": True, "qk_norm": True}),
            "gemma3": ("tiny-llama", {"activation": "gelu_tanh", "qk_norm": True, "norm_unit_offset": True,
                                      "sandwich_norm": True, "scale_embeddings": True, "sliding_window": 4,
                                      "layer_types": ["sliding_attention", "full_attention"],
                                      "rope_local_theta": 10_000.0, "query_pre_attn_scalar": 16.0})}


def family_model(family: str, seed: int = 4) -> GPT:
    preset, kw = FAMILIES[family]
    model = random_model(preset, seed, **kw)
    for name, p in model.named_parameters():  # biases and q/k norm weights away from 0 / 1, so they count
        if p.dim() == 1 and ("_proj.bias" in name or "_norm" in name):
            p.data.normal_(1.0 if "_norm" in name else 0.0, 0.3)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_left_padded_prefill_equals_each_prompt_alone(family: str) -> None:
    """Prompts of different lengths in one forward (left-padded, each row at its own positions): every row's
    logits are its own prompt's, and each row's cache then decodes as that prompt alone."""
    model = family_model(family)
    prompts = [[5, 9, 200, 31, 7, 7, 100], [42], [3, 1, 4, 1, 5]]
    logits, cache = prefill_rows(model, prompts)  # (3, V)
    with torch.inference_mode():
        want = torch.cat([model(torch.tensor([p]))[0][:, -1] for p in prompts])
        torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
        assert cache.lens[:3].tolist() == [7, 1, 5]
        nxt = logits.argmax(-1)  # (3,)
        got = model(nxt.view(3, 1), cache=cache, last_only=True)[0][:, -1]
        want = torch.cat([model(torch.tensor([p + [int(t)]]))[0][:, -1] for p, t in zip(prompts, nxt, strict=True)])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rows_of_other_lengths_join_mid_flight(family: str) -> None:
    """A stream is decoding when two more arrive (prompts of other lengths): they are prefilled together and
    join its batch at other positions, and every stream still gives exactly what it gives alone."""
    model, tok = family_model(family), byte_tokenizer()
    prompts = [tok.encode(p) for p in PROMPTS[1:4]]  # 16, 29 and 8 tokens
    lengths = [24, 12, 18]
    alone = [generate(model, tok, p, greedy(n)) for p, n in zip(prompts, lengths, strict=True)]
    gate, seen = threading.Event(), []

    def hold(logits: torch.Tensor, prev: torch.Tensor | None, nxt: torch.Tensor) -> None:
        seen.append(int(nxt))
        if len(seen) == 4:  # the first stream waits mid-flight until the others are queued
            assert gate.wait(10)

    sched = BatchScheduler(model, tok)
    first = sched.submit(prompts[0], greedy(lengths[0]), observe=hold)
    while len(seen) < 4:
        threading.Event().wait(0.001)
    others = [sched.submit(p, greedy(n)) for p, n in zip(prompts[1:], lengths[1:], strict=True)]
    gate.set()
    streams = [first, *others]
    for s in streams:
        s.text()
    assert [s.token_ids for s in streams] == alone
    assert seen == alone[0]  # the observer saw every token of its own row, and only those
    assert sched.prefills == 2 and sched.max_batch == 3  # the two late rows shared one prefill, then all decoded


def test_sampling_settings_and_stop_per_row() -> None:
    model, tok = random_model("tiny-llama", seed=1), byte_tokenizer()
    prompts = [tok.encode(p) for p in PROMPTS[:3]]
    sampled = GenerationConfig(max_new_tokens=15, temperature=0.9, top_p=0.8, seed=7, stop_on_eos=False)
    penal = GenerationConfig(max_new_tokens=15, temperature=0.0, repetition_penalty=1.3, stop_on_eos=False)
    cfgs = [sampled, penal, greedy(15)]
    alone = [stream_generate(model, tok, p, c) for p, c in zip(prompts, cfgs, strict=True)]
    alone_text = [s.text() for s in alone]
    out = run_together(BatchScheduler(model, tok), prompts, cfgs)
    assert [s.token_ids for _, s in out] == [s.token_ids for s in alone]  # same seed -> same sample
    # a stop string taken from the greedy reply cuts that row only
    stop = alone_text[2][5:7]
    cut = greedy(15, stop=[stop])
    out2 = run_together(BatchScheduler(model, tok), prompts, [sampled, penal, cut])
    assert out2[2][0] == stream_generate(model, tok, prompts[2], cut).text()
    assert out2[2][1].stats.stop_reason == "stop_string" and stop not in out2[2][0]
    assert out2[0][0] == alone_text[0] and out2[1][0] == alone_text[1]


def test_eos_and_stopped_rows_leave_and_thread_ends() -> None:
    model, tok = random_model("tiny-llama", seed=2), byte_tokenizer()
    prompts = [tok.encode(p) for p in PROMPTS[:3]]
    first = generate(model, tok, prompts[0], greedy(5))
    sched = BatchScheduler(model, tok)
    eos_cfg = GenerationConfig(max_new_tokens=30, temperature=0.0, eos_token_ids=[first[3]])  # its 4th token ends it
    k = first.index(first[3])
    stop = threading.Event()
    streams = [sched.submit(prompts[0], eos_cfg), sched.submit(prompts[1], greedy(40), stop_event=stop),
               sched.submit(prompts[2], greedy(12))]
    it = iter(streams[1])
    next(it)
    stop.set()  # the client went away
    rest = "".join(it)
    assert streams[1].stats.stop_reason == "stopped" and len(streams[1].token_ids) < 40
    assert rest is not None
    assert streams[0].text() == tok.decode(first[:k]) and streams[0].stats.stop_reason == "eos"
    streams[2].text()
    assert streams[2].token_ids == generate(model, tok, prompts[2], greedy(12))
    sched._thread and sched._thread.join(timeout=10)
    assert sched._thread is None  # no idle decode thread is left behind
    assert not [t for t in threading.enumerate() if t.name == "batch-decode" and t.is_alive()
                and getattr(t, "_target", None) is not None and t._target.__self__ is sched]


def test_bad_input_is_refused_at_submit() -> None:
    model, tok = random_model("tiny-llama"), byte_tokenizer()
    sched = BatchScheduler(model, tok)
    with pytest.raises(ValueError, match="empty"):
        sched.submit([], greedy(3))
    with pytest.raises(ValueError, match="context"):
        sched.submit([1] * 64, greedy(3))


def test_scheduler_for_is_one_per_model() -> None:
    from llm_core.generation.batching import scheduler_for

    model, tok = random_model("tiny-llama"), byte_tokenizer()
    assert scheduler_for(model, tok) is scheduler_for(model, tok)
    assert scheduler_for(random_model("tiny-llama"), tok) is not scheduler_for(model, tok)
    import copy
    import gc

    copy.deepcopy(model)  # the model carries no lock or thread
    sched = scheduler_for(model, tok)
    del model
    gc.collect()
    with pytest.raises(RuntimeError, match="unloaded"):
        sched.model  # noqa: B018 - the scheduler did not keep the model alive


def test_api_batches_plain_models_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API sends plain local models to the shared loop; an adapter (switched per reply) keeps its own."""
    from types import SimpleNamespace

    from api import openai_api

    model = random_model("tiny-llama")
    plain = SimpleNamespace(model=model, core=SimpleNamespace(adapter=None))
    adapted = SimpleNamespace(model=model, core=SimpleNamespace(adapter=object()))
    assert openai_api.batchable(plain, greedy(3))
    assert not openai_api.batchable(adapted, greedy(3))
    assert not openai_api.batchable(plain, GenerationConfig(use_cache=False))
    monkeypatch.setattr(openai_api, "BATCHING", False)
    assert not openai_api.batchable(plain, greedy(3))


def test_token_recorder_sees_its_row_as_alone() -> None:
    """Logprobs requests join the batch too: a row's recorder records the numbers it records alone."""
    from llm_core.labs.token_view import TokenRecorder

    model, tok = random_model("tiny-llama", seed=5), byte_tokenizer()
    prompts = [tok.encode(p) for p in PROMPTS[1:3]]
    cfg = greedy(9)
    alone = TokenRecorder(tok, cfg)
    stream_generate(model, tok, prompts[0], cfg, observe=alone).text()
    rec = TokenRecorder(tok, cfg)
    sched = BatchScheduler(model, tok)
    streams = [sched.submit(prompts[0], cfg, observe=rec), sched.submit(prompts[1], greedy(12))]
    for s in streams:
        s.text()
    assert [s.token_id for s in rec.steps] == [s.token_id for s in alone.steps] == streams[0].token_ids
    assert [s.logprob for s in rec.steps] == pytest.approx([s.logprob for s in alone.steps], abs=1e-5)
    for got, want in zip(rec.steps, alone.steps, strict=True):
        assert got.top_ids[:5] == want.top_ids[:5]
        assert got.top_logprobs == pytest.approx(want.top_logprobs, abs=1e-5)
