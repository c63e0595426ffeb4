"""LoRA through peft on a tiny random GPT: what trains, what is wrapped, merge/save/load/switch equivalences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from finetune.lora import AdapterSwitch, adapter_base, apply_lora, load_adapter, save_adapter, trainable_summary
from tests.test_finetune_utils import tiny_gpt

IDX = torch.randint(0, 259, (2, 12), generator=torch.Generator().manual_seed(1))


def randomize_lora(pm, seed: int = 0) -> None:
    """B starts at zero (adapter is a no-op); give it values so equivalence tests compare something real."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


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
