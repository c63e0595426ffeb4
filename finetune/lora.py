"""LoRA on our GPT through ``peft``: wrap, save/load in PEFT format, merge, and switch an adapter on/off in chat.

peft injects ``lora_A``/``lora_B`` into the named ``nn.Linear`` modules *in place*, so the plain ``GPT`` object
(``AdapterSwitch.model``) runs with the adapter and can be handed to ``llm_core.generation.generate`` unchanged; turning
the adapter off (``disable_adapter_layers``) gives back the base model's exact outputs without reloading it.

An adapter folder is standard PEFT (``adapter_config.json`` + ``adapter_model.safetensors``), loadable with
``PeftModel.from_pretrained(GPT, folder)``; ``base_model_name_or_path`` in the config names the base model
(a ``llm_core.weights.hub`` name or an absolute checkpoint path) so the folder alone is enough to reload it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def available_targets(model: nn.Module) -> list[str]:
    """LoRA-able projection names present in this model (gpt2 has no gate_proj)."""
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return [t for t in LORA_TARGETS if t in present]


def resolve_targets(model: nn.Module, requested: list[str], strict: bool = False) -> list[str]:
    """Validate requested target names; unknown names always raise, absent ones raise only when ``strict``."""
    unknown = [t for t in requested if t not in LORA_TARGETS]
    if unknown:
        raise ValueError(f"unknown LoRA target modules {unknown}; choose from {list(LORA_TARGETS)}")
    avail = available_targets(model)
    missing = [t for t in requested if t not in avail]
    if missing and strict:
        raise ValueError(f"target modules {missing} do not exist in this model (it has {avail})")
    targets = [t for t in requested if t in avail]
    if not targets:
        raise ValueError(f"none of the target modules {requested} exist in this model (it has {avail})")
    return targets


def apply_lora(model: nn.Module, rank: int = 16, alpha: float = 32.0, dropout: float = 0.0,
               targets: list[str] | tuple[str, ...] = LORA_TARGETS, base_name: str | None = None,
               strict: bool = False) -> PeftModel:
    """Freeze ``model`` and inject LoRA (B initialised to zero, so outputs are unchanged at start)."""
    tgt = resolve_targets(model, list(targets), strict)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=tgt, bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, cfg)
    pm.peft_config["default"].base_model_name_or_path = base_name
    return pm


def trainable_summary(model: nn.Module) -> tuple[int, int, float]:
    """(trainable, total, percent). Tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total, 100.0 * trainable / max(1, total)


def save_adapter(pm: PeftModel, folder: str | Path) -> Path:
    """Write the PEFT adapter files into ``folder``, each file replaced atomically (weights first)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=folder))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm.save_pretrained(str(tmp), save_embedding_layers=False)
        for name in (*ADAPTER_FILES, "README.md"):
            if (tmp / name).exists():
                os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def adapter_base(folder: str | Path) -> str:
    """The base model recorded in an adapter folder's ``adapter_config.json``."""
    p = Path(folder) / "adapter_config.json"
    if not p.exists():
        raise FileNotFoundError(f"{folder}: not an adapter folder (no adapter_config.json)")
    base = json.loads(p.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{p}: base_model_name_or_path is not set; pass the base model explicitly")
    return base


def list_adapters(root: str | Path | None = None) -> list[Path]:
    """Adapter folders (with adapter_config.json) under ``root`` (default ``data_dir()/adapters``), newest first."""
    from finetune.paths import adapters_dir

    root = Path(root) if root is not None else adapters_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "adapter_config.json").is_file()]
    return sorted(found, key=lambda p: (p / "adapter_model.safetensors").stat().st_mtime
                  if (p / "adapter_model.safetensors").exists() else 0.0, reverse=True)


def load_adapter(model: nn.Module, folder: str | Path, is_trainable: bool = False) -> PeftModel:
    """Put a saved adapter onto an already loaded base ``model`` (modified in place)."""
    if not (Path(folder) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder}: not an adapter folder (no adapter_config.json)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)


def load_adapted(folder: str | Path, base: str | None = None, device: str | None = None):
    """Load the recorded base model (via ``llm_core.weights.hub``) and the adapter on top: (PeftModel, tokenizer)."""
    from llm_core.weights.hub import load_model

    model, tok = load_model(base or adapter_base(folder), device=device)
    return load_adapter(model, folder), tok


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    """Fold the adapter into the base weights (``merge_and_unload``) and save a full checkpoint that
    ``llm_core.weights.checkpoint.load_checkpoint`` / ``hub.load_model`` load like any model."""
    from llm_core.weights.checkpoint import save_checkpoint

    pm, tok = load_adapted(adapter, base)
    base_name = base or adapter_base(adapter)
    merged = pm.merge_and_unload()
    save_checkpoint(out, merged, tok, extra={"merged_from_adapter": str(Path(adapter).resolve()),
                                             "base_model": base_name})
    return Path(out)


class AdapterSwitch:
    """A base model with one adapter loaded, switchable on/off in chat without reloading anything.

    ``switch.model`` is the plain GPT (LoRA layers injected in place): pass it to ``generate`` as usual.
    """

    def __init__(self, pm: PeftModel, folder: str | Path | None = None):
        self.peft_model = pm
        self.folder = str(folder) if folder is not None else None
        self._enabled = True

    @classmethod
    def attach(cls, model: nn.Module, folder: str | Path) -> AdapterSwitch:
        return cls(load_adapter(model, folder), folder)

    @property
    def model(self) -> nn.Module:
        return self.peft_model.get_base_model()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def set_enabled(self, on: bool) -> None:
        if on:
            self.peft_model.base_model.enable_adapter_layers()
        else:
            self.peft_model.base_model.disable_adapter_layers()
        self._enabled = on

    def enable(self) -> None:
        self.set_enabled(True)

    def disable(self) -> None:
        self.set_enabled(False)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """``with switch.disabled() as base: ...`` runs the base model, then restores the previous state."""
        was = self._enabled
        self.set_enabled(False)
        try:
            yield self.model
        finally:
            self.set_enabled(was)

    def unload(self) -> nn.Module:
        """Remove the LoRA layers and return the untouched base model (e.g. before loading another adapter)."""
        return self.peft_model.unload()
