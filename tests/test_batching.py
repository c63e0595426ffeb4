"""Dynamic batching (llm_core.batching): concurrent streams share decode steps and give what they give alone."""

from __future__ import annotations

import threading

import pytest
import torch

from llm_core.batching import BatchKVCache, BatchScheduler, batched_decode_step
from llm_core.config import ModelConfig
from llm_core.generate import GenerationConfig, generate, stream_generate
from llm_core.model import GPT
from llm_core.tokenizer import BPETokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PROMPTS = ["a", "Hello there, how", "The quick brown fox jumps over", "xyz 123 ", "é"]


def byte_tokenizer() -> BPETokenizer:
    return BPETokenizer(pattern="gpt2", special_tokens={"<|endoftext|>": 256})


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
    cache = None
    for s in seqs:
        kv = model.new_cache(1)
        with torch.inference_mode():
            model(s[:-1].view(1, -1), cache=kv)
        if cache is None:
            cache = BatchKVCache(model.config.n_layer, model.config.n_kv_head, model.config.head_dim,
                                 torch.device("cpu"), torch.float32, slots=1, cap=4)  # both must grow
        cache.add(kv.k, kv.v, len(s) - 1)
    got = batched_decode_step(model, torch.stack([s[-1] for s in seqs]), cache)  # (3, V)
    with torch.inference_mode():
        want = torch.cat([model(s.view(1, -1))[0][:, -1] for s in seqs])  # (3, V)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert cache.lens[:3].tolist() == [3, 11, 6]


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
    from llm_core.batching import scheduler_for

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
