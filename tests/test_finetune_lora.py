"""LoRA through peft on a tiny random GPT: what trains, what is wrapped, merge/save/load/switch equivalences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from finetune.lora import AdapterSwitch, adapter_base, apply_lora, load_adapter, save_adapter, trainable_summary
from tests.test_finetune_utils import ByteChatTokenizer, tiny_gpt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

IDX = torch.randint(0, 259, (2, 12), generator=torch.Generator().manual_seed(1))


def randomize_lora(pm, seed: int = 0, scale: float = 0.1) -> None:
    """B starts at zero (adapter is a no-op); give it values so equivalence tests compare something real."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def logits(m) -> torch.Tensor:
    with torch.no_grad():
        return m(IDX)[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_lora_params_train_and_targets_exact(arch: str) -> None:
    model = tiny_gpt(arch)
    pm = apply_lora(model, rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    wrapped = {n.removeprefix("base_model.model.") for n, m in pm.named_modules() if isinstance(m, LoraLayer)}
    L = model.config.n_layer
    assert wrapped == {f"blocks.{i}.{p}" for i in range(L) for p in ("attn.q_proj", "attn.v_proj", "mlp.down_proj")}
    n_tr, n_all, pct = trainable_summary(pm)
    # rank 4 on (C x C) q, v and (I x C) down: r * (in + out) each
    C, kv, inter = model.config.n_embd, model.config.n_kv_head * model.config.head_dim, model.config.intermediate_size
    assert n_tr == L * 4 * ((C + C) + (C + kv) + (inter + C))
    assert n_all == n_tr + tiny_gpt(arch).num_params() and 0 < pct < 100


def test_target_validation() -> None:
    with pytest.raises(ValueError, match="unknown LoRA target"):
        apply_lora(tiny_gpt(), targets=["qkv"])
    with pytest.raises(ValueError, match=r"\['gate_proj'\] do not exist"):
        apply_lora(tiny_gpt("gpt2"), targets=["q_proj", "gate_proj"], strict=True)
    pm = apply_lora(tiny_gpt("gpt2"), targets=["q_proj", "gate_proj"])  # non-strict: skipped
    assert pm.peft_config["default"].target_modules == {"q_proj"}


def test_base_weights_unchanged_after_optimizer_step() -> None:
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pm = apply_lora(model, rank=4, alpha=8)
    randomize_lora(pm)
    lora_before = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    pm.train()
    _, loss = pm(IDX[:, :-1], IDX[:, 1:])
    loss.backward()
    opt.step()
    after = pm.get_base_model().state_dict()
    for k, v in before.items():
        key = k if k in after else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[key], v), k
    changed = [n for n, p in pm.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert len(changed) == len(lora_before)


def test_merged_logits_equal_unmerged() -> None:
    pm = apply_lora(tiny_gpt(), rank=4, alpha=8)
    randomize_lora(pm)
    base = tiny_gpt()
    with_adapter = logits(pm)
    assert not torch.allclose(with_adapter, logits(base), atol=1e-3)  # the adapter really does something
    merged = pm.merge_and_unload()
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    torch.testing.assert_close(logits(merged), with_adapter, atol=1e-5, rtol=1e-5)


def test_adapter_save_load_identical_logits(tmp_path: Path) -> None:
    pm = apply_lora(tiny_gpt(), rank=4, alpha=8, base_name="tiny-test-base")
    randomize_lora(pm)
    expected = logits(pm)
    save_adapter(pm, tmp_path / "ad")
    assert (tmp_path / "ad" / "adapter_model.safetensors").exists()
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["base_model_name_or_path"] == "tiny-test-base"
    assert adapter_base(tmp_path / "ad") == "tiny-test-base"
    # plain peft API on a fresh copy of the base model
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(tiny_gpt(), str(tmp_path / "ad"))
    assert torch.equal(logits(loaded), expected)
    assert torch.equal(logits(load_adapter(tiny_gpt(), tmp_path / "ad")), expected)


def test_adapter_switch_on_off(tmp_path: Path) -> None:
    base_logits = logits(tiny_gpt())
    pm = apply_lora(tiny_gpt(), rank=4, alpha=8)
    randomize_lora(pm)
    save_adapter(pm, tmp_path / "ad")
    adapted = logits(pm)

    model = tiny_gpt()  # e.g. the model already loaded in the chat tab
    sw = AdapterSwitch.attach(model, tmp_path / "ad")
    assert sw.model is model and sw.enabled
    assert torch.equal(logits(sw.model), adapted)
    sw.disable()
    assert not sw.enabled and torch.equal(logits(sw.model), base_logits)
    sw.enable()
    assert torch.equal(logits(sw.model), adapted)
    with sw.disabled() as m:
        assert torch.equal(logits(m), base_logits)
    assert sw.enabled and torch.equal(logits(sw.model), adapted)
    plain = sw.unload()
    assert not any(isinstance(m, LoraLayer) for m in plain.modules())
    assert torch.equal(logits(plain), base_logits)


def test_load_adapter_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_adapter(tiny_gpt(), tmp_path)
    pm = apply_lora(tiny_gpt(), rank=4, alpha=8)
    save_adapter(pm, tmp_path / "ad")
    with pytest.raises(ValueError, match="base_model_name_or_path is not set"):
        adapter_base(tmp_path / "ad")


def test_switch_in_generation(tmp_path: Path) -> None:
    """Chat generation through llm_core.generation.generate honours the switch (also on its fast decode path)."""
    from llm_core.generation.generate import GenerationConfig, generate

    tok = ByteChatTokenizer()
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}]))
    gcfg = GenerationConfig(max_new_tokens=12, temperature=0.0, stop_on_eos=False)
    base_out = generate(tiny_gpt(), tok, prompt, gcfg)
    pm = apply_lora(tiny_gpt(), rank=4, alpha=8)
    randomize_lora(pm, seed=3, scale=2.0)
    adapted_out = generate(pm.get_base_model(), tok, prompt, gcfg)
    save_adapter(pm, tmp_path / "ad")
    sw = AdapterSwitch.attach(tiny_gpt(), tmp_path / "ad")
    assert generate(sw.model, tok, prompt, gcfg) == adapted_out != base_out
    with sw.disabled() as m:
        assert generate(m, tok, prompt, gcfg) == base_out


def test_merge_adapter_to_checkpoint_and_cli(tmp_path: Path) -> None:
    """merge_adapter reloads the recorded base (a checkpoint folder here), folds LoRA in, saves a checkpoint
    that loads like any model and gives the adapter's logits."""
    from finetune.__main__ import main as cli_main
    from llm_core.tokenizer import CharTokenizer
    from llm_core.weights.checkpoint import load_checkpoint, save_checkpoint

    tok = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ", special_tokens=["<|endoftext|>"])
    base_dir = tmp_path / "base"
    save_checkpoint(base_dir, tiny_gpt(vocab_size=tok.vocab_size), tok)
    model, _ = load_checkpoint(base_dir)
    idx = torch.randint(0, tok.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = model(idx)[0]
    pm = apply_lora(model, rank=4, alpha=8, base_name=str(base_dir))
    randomize_lora(pm)
    with torch.no_grad():
        expected = pm(idx)[0]
    save_adapter(pm, tmp_path / "ad")
    assert cli_main(["merge", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "merged")]) == 0
    merged, mtok = load_checkpoint(tmp_path / "merged")
    assert mtok is not None and mtok.encode("abc") == tok.encode("abc")
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    with torch.no_grad():
        got = merged(idx)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, base_logits, atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradient_checkpointing_gives_the_same_lora_gradients(arch: str) -> None:
    """Recomputing blocks in backward must not change the loss or any adapter gradient (dropout on: the
    recomputation replays the same random masks)."""
    saved: dict[bool, int] = {}

    def grads(ckpt: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pm = apply_lora(tiny_gpt(arch), rank=4, alpha=8, dropout=0.1)
        randomize_lora(pm)
        pm.get_base_model().gradient_checkpointing = ckpt
        pm.train()
        torch.manual_seed(7)
        tgt = IDX.roll(-1, 1).masked_fill(torch.arange(12) < 5, -100)
        saved[ckpt] = 0

        def pack(t: torch.Tensor) -> torch.Tensor:  # what autograd keeps for backward
            saved[ckpt] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, loss = pm(IDX, tgt, loss_only=True)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}

    loss0, g0 = grads(False)
    loss1, g1 = grads(True)
    assert saved[True] < saved[False] / 2  # the point of it: most activations are not kept
    torch.testing.assert_close(loss1, loss0)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], msg=n)
    assert any(g.abs().sum() > 0 for g in g0.values())
