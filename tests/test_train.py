"""Trainer: schedule, parameter groups, exact resume, stop requests, checkpoints that chat can load."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from llm_core.model.config import ModelConfig
from llm_core.model.gpt import GPT
from llm_core.training.lr_schedule import cosine_lr, cosine_lr_by_progress
from llm_core.training.train import parse_args
from llm_core.training.train_events import CheckpointEvent, EvalEvent, StepEvent
from llm_core.training.train_state import load_train_state, optimizer_from_flat, optimizer_to_flat
from llm_core.training.trainer import PRETRAIN_PRESETS, TrainConfig, param_groups, recipe, train

WORDS = "the king and the queen walk to the castle while a fool sings of gold and rain".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~20 KB of word salad with structure a tiny model learns in a few steps."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(WORDS), (4000,), generator=g).tolist()
    lines = [" ".join(WORDS[i] for i in idx[k:k + 8]) + ".\n" for k in range(0, len(idx), 8)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(lines))
    return path


def tiny(corpus, tmp_path, name="run", **kw) -> TrainConfig:
    # one thread: tiny matrices gain nothing from more, and the CI machine is shared
    base = dict(data=str(corpus), out_dir=str(tmp_path / name), data_cache=str(tmp_path / "cache"), num_threads=1)
    return recipe("tiny", **{**base, **kw})


def test_lr_schedule_values():
    # warmup: (step+1)/(warmup+1) of the peak
    assert cosine_lr(0, 1e-3, 1e-4, 10, 100) == pytest.approx(1e-3 / 11)
    assert cosine_lr(9, 1e-3, 1e-4, 10, 100) == pytest.approx(1e-3 * 10 / 11)
    assert cosine_lr(10, 1e-3, 1e-4, 10, 100) == pytest.approx(1e-3)  # peak at the end of warmup
    assert cosine_lr(55, 1e-3, 1e-4, 10, 100) == pytest.approx(5.5e-4)  # half way down the cosine
    assert cosine_lr(100, 1e-3, 1e-4, 10, 100) == pytest.approx(1e-4)
    assert cosine_lr(500, 1e-3, 1e-4, 10, 100) == pytest.approx(1e-4)
    lrs = [cosine_lr(s, 1e-3, 1e-4, 10, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay
    # clock-driven variant: same shape over the fraction of the budget used
    assert cosine_lr_by_progress(3, 0.01, 1e-3, 1e-4, 10) == pytest.approx(1e-3 * 4 / 11)
    assert cosine_lr_by_progress(50, 0.5, 1e-3, 1e-4, 10) == pytest.approx(5.5e-4)
    assert cosine_lr_by_progress(50, 0.6, 1e-3, 1e-4, 10, warmup_progress=0.2) == pytest.approx(5.5e-4)
    assert cosine_lr_by_progress(50, 1.3, 1e-3, 1e-4, 10) == pytest.approx(1e-4)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_decay_groups(preset):
    model = GPT(ModelConfig.from_preset(preset))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "tok_emb.weight" in decay_names and "blocks.0.attn.q_proj.weight" in decay_names
    assert "blocks.0.mlp.down_proj.weight" in decay_names
    assert "norm_f.weight" in no_decay_names and "blocks.1.attn_norm.weight" in no_decay_names
    if preset == "tiny-gpt2":
        assert "blocks.0.attn.q_proj.bias" in no_decay_names and "pos_emb.weight" in decay_names
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    # every parameter exactly once (the tied lm_head is tok_emb)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_optimizer_state_flat_roundtrip():
    model = GPT(ModelConfig.from_preset("tiny-llama"))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randint(0, 128, (2, 8)), torch.randint(0, 128, (2, 8)))[1].backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt.state_dict())
    import json

    back = optimizer_from_flat(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    opt2.load_state_dict(back)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95)
    for (_, a), (_, b) in zip(opt.state.items(), opt2.state.items()):
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a[k], b[k])


def test_tiny_run_learns_and_reports(corpus, tmp_path):
    events = []
    res = train(tiny(corpus, tmp_path, max_steps=40, lr=3e-3, eval_interval=20), callbacks=events.append)
    assert res.steps == 40 and res.stop_reason == "max_steps" and len(res.losses) == 40
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert res.val_loss is not None and res.val_ppl == pytest.approx(math.exp(res.val_loss))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == list(range(1, 41))
    assert steps[0].lr == pytest.approx(3e-3 / 3) and steps[-1].eta_s is not None and steps[-1].tokens_per_s > 0
    assert [e.step for e in events if isinstance(e, EvalEvent)] == [20, 40]
    assert [e.step for e in events if isinstance(e, CheckpointEvent)] == [40]


def test_resume_is_exact(corpus, tmp_path):
    """Stop at step k (via the stop event), resume to n: same losses and weights as one uninterrupted run."""
    kw = dict(max_steps=10, dropout=0.1, grad_accum=2, checkpoint_interval=3, eval_interval=4)
    full = train(tiny(corpus, tmp_path, "full", **kw))

    stop = threading.Event()

    def stop_at_6(ev):
        if isinstance(ev, StepEvent) and ev.step == 6:
            stop.set()

    part = train(tiny(corpus, tmp_path, "part", **kw), callbacks=stop_at_6, stop_event=stop)
    assert part.stop_reason == "stopped" and part.steps == 6
    resumed = train(tiny(corpus, tmp_path, "part", resume=True, **kw))
    assert resumed.steps == 10 and len(resumed.losses) == 4
    assert part.losses + resumed.losses == full.losses  # bitwise equal floats
    a = load_train_state(tmp_path / "full").model.state_dict()
    b = load_train_state(tmp_path / "part").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the CLI's `--out DIR --resume` picks the run's saved settings back up; given flags override them
    cfg, _ = parse_args(["--out", str(tmp_path / "part"), "--resume", "--max-steps", "12"])
    assert (cfg.data, cfg.dropout, cfg.grad_accum, cfg.max_steps, cfg.resume) == (str(corpus), 0.1, 2, 12, True)


def test_gradient_checkpointing_trains_identically(corpus, tmp_path):
    """The flag reaches the model, and recomputing blocks in backward (dropout included) changes no loss."""
    kw = dict(max_steps=4, dropout=0.1, eval_interval=0)
    plain = train(tiny(corpus, tmp_path, "plain", **kw))
    ckpt = train(tiny(corpus, tmp_path, "ckpt", gradient_checkpointing=True, **kw))
    torch.testing.assert_close(ckpt.losses, plain.losses)
    cfg, _ = parse_args(["--gradient-checkpointing", "--out", str(tmp_path / "x")])
    assert cfg.gradient_checkpointing is True


def test_stop_event_stops_promptly_with_loadable_checkpoint(corpus, tmp_path):
    from llm_core.generation.generate import GenerationConfig, generate
    from llm_core.weights.hub import load_model

    stop = threading.Event()

    def on_event(ev):
        if isinstance(ev, StepEvent) and ev.step == 3:
            threading.Thread(target=stop.set).start()  # as the UI would, from another thread

    res = train(tiny(corpus, tmp_path, max_steps=10_000), callbacks=on_event, stop_event=stop)
    assert res.stop_reason == "stopped" and 3 <= res.steps <= 5
    model, tok = load_model(res.out_dir)
    assert model.config.vocab_size == tok.vocab_size and not model.training
    prompt = tok.encode("the king")
    out = generate(model, tok, prompt, GenerationConfig(max_new_tokens=10, temperature=0.8, seed=0))
    assert len(out) == 10 and all(0 <= i < tok.vocab_size for i in out)
    text = tok.decode(out)
    assert len(text) == 10 and tok.encode(text) == out  # character level: one character per id, both ways
    assert generate(model, tok, prompt, GenerationConfig(max_new_tokens=10, temperature=0.8, seed=0)) == out


def test_trained_checkpoint_chats_after_learning(corpus, tmp_path):
    """A model trained a bit longer continues the corpus' words, loaded like any other checkpoint."""
    from llm_core.generation.generate import GenerationConfig, generate
    from llm_core.weights.hub import load_model

    res = train(tiny(corpus, tmp_path, max_steps=150, lr=5e-3, batch_size=8, eval_interval=0))
    model, tok = load_model(res.out_dir)
    out = tok.decode(generate(model, tok, tok.encode("the "), GenerationConfig(max_new_tokens=60, temperature=0.5,
                                                                              seed=1)))
    words = [w.strip(".\n") for w in out.split()[1:-1]]
    assert words and sum(w in WORDS for w in words) >= 0.6 * len(words), out


def test_time_budget_and_out_dir_safety(corpus, tmp_path):
    res = train(tiny(corpus, tmp_path, max_steps=None, max_time=0.5, eval_interval=0))
    assert res.stop_reason == "max_time" and res.steps >= 1
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a training run"):
        train(tiny(corpus, tmp_path, "precious"))
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(tiny(corpus, tmp_path, "missing", resume=True))


def test_config_validation_and_cli_parsing():
    with pytest.raises(ValueError, match="max_steps or max_time"):
        TrainConfig(max_steps=None)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    cfg, ns = parse_args(["--data", "shakespeare", "--tokenizer", "bpe:512", "--preset", "nano-llama", "--out", "x",
                          "--max-steps", "7", "--max-time", "60", "--lr", "3e-3", "--min-lr", "none", "--bias",
                          "false", "--resume", "--compile"])
    assert (cfg.data, cfg.tokenizer, cfg.preset, cfg.out_dir) == ("shakespeare", "bpe:512", "nano-llama", "x")
    assert (cfg.max_steps, cfg.max_time, cfg.lr, cfg.min_lr, cfg.bias, cfg.resume, cfg.compile) == (
        7, 60.0, 3e-3, None, False, True, True)
    cfg, _ = parse_args(["--recipe", "nanogpt-cpu", "--batch-size", "32", "--data", "a.txt", "b.txt"])
    assert cfg.batch_size == 32 and cfg.max_steps == PRETRAIN_PRESETS["nanogpt-cpu"]["max_steps"]
    assert cfg.data == ["a.txt", "b.txt"]
    for name in PRETRAIN_PRESETS:  # every named recipe is a valid config
        assert isinstance(recipe(name), TrainConfig)
    assert parse_args(["--recipe", "cpu-3min"])[0].compile is True  # the recipe turns it on ...
    assert parse_args(["--recipe", "cpu-3min", "--no-compile"])[0].compile is False  # ... and the CLI can say no


def test_auto_dtype_picks_bf16_only_where_matmuls_are_native(monkeypatch):
    """dtype=auto: bf16 autocast on an AMX CPU, fp32 on other CPUs; explicit dtypes are obeyed either way."""
    from llm_core.precision import native_bf16
    from llm_core.training.trainer import _autocast

    cpu = torch.device("cpu")
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert native_bf16(cpu) is amx
        ctx, name = _autocast(TrainConfig(dtype="auto"), cpu)
        assert name == ("bfloat16" if amx else "float32")
        with ctx:
            out = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
        assert out.dtype == (torch.bfloat16 if amx else torch.float32)
        assert _autocast(TrainConfig(dtype="float32"), cpu)[1] == "float32"
        assert _autocast(TrainConfig(dtype="bfloat16"), cpu)[1] == "bfloat16"


def test_bf16_training_learns_and_saves_fp32_weights(corpus, tmp_path):
    """bf16 autocast on the CPU (what auto picks on AMX machines): the loss falls, master weights stay fp32."""
    from llm_core.weights.hub import load_model

    res = train(tiny(corpus, tmp_path, "bf16", max_steps=40, dtype="bfloat16", lr=3e-3))
    assert res.amp_dtype == "bfloat16"
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    model, _ = load_model(res.out_dir)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_compile_failure_falls_back_to_eager_with_the_same_result(corpus, tmp_path, monkeypatch):
    """No C++ compiler (or an unsupported platform): the run goes on eagerly, with the step it was on redone
    from the same RNG state, so the losses equal an eager run's."""
    from llm_core.training.train_events import StatusEvent

    eager = train(tiny(corpus, tmp_path, "eager", max_steps=6, dropout=0.1))

    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *a, **k):
            torch.rand(3)  # consumes RNG before failing, as tracing may
            raise torch._dynamo.exc.TorchDynamoException("no working C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda model, **_: Broken(model))
    events = []
    res = train(tiny(corpus, tmp_path, "broken", max_steps=6, dropout=0.1, compile=True), callbacks=events.append)
    assert any(isinstance(e, StatusEvent) and "torch.compile failed" in e.message for e in events)
    assert res.losses == pytest.approx(eager.losses, abs=1e-6)
    assert not res.compiled and res.amp_dtype == eager.amp_dtype


@pytest.mark.slow
def test_compiled_training_matches_eager(corpus, tmp_path):
    """The real torch.compile path (inductor, C++ kernels) trains like eager mode."""
    eager = train(tiny(corpus, tmp_path, "eager", max_steps=4, dtype="float32"))
    compiled = train(tiny(corpus, tmp_path, "compiled", max_steps=4, dtype="float32", compile=True))
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-3)
    assert compiled.compiled and not eager.compiled and compiled.amp_dtype == "float32"
