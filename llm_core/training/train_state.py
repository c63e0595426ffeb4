"""Save and restore a training run exactly: checkpoint + optimizer moments + RNG states + counters.

Layout of a run folder (itself a normal checkpoint that ``llm_core.weights.hub.load_model`` opens)::

    config.json  model.safetensors  tokenizer_scratch.json  checkpoint.json
    train_state/optimizer.safetensors   AdamW moments and step counts (flat tensor names)
    train_state/optimizer.json          param groups and where each tensor goes
    train_state/rng.safetensors         torch CPU (+ CUDA) RNG and the batch sampler's generator
    train_state/state.json              step, tokens seen, time used, the TrainConfig

The whole folder is written next to the target and swapped in at once, so a crash mid-save leaves the
previous checkpoint intact. Only safetensors and JSON: nothing is unpickled on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llm_core.atomic import staged_dir
from llm_core.model.gpt import GPT
from llm_core.weights.checkpoint import load_checkpoint, read_meta, save_checkpoint

STATE_DIR = "train_state"
STATE_VERSION = 1


@dataclass
class TrainState:
    """Counters that continue across a resume."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training-loop seconds used (for max_time and the clock-driven schedule)
    warmup_end_progress: float | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    last_val_step: int = -1
    dataset: str = ""  # prepared token folder
    best_step: int = -1  # the step of best_val_loss
    evals_since_best: int = 0  # evaluations without a new best (early stopping counts them against its patience)


@dataclass
class ResumeState:
    model: GPT
    tokenizer: Any
    optimizer_state: dict[str, Any]
    rng: dict[str, torch.Tensor]
    state: TrainState
    train_config: dict[str, Any]


def optimizer_to_flat(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (flat tensors for safetensors, JSON structure referring to them)."""
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        out: dict[str, Any] = {}
        for k, v in entry.items():
            if torch.is_tensor(v):
                name = f"state.{pid}.{k}"
                tensors[name] = v.detach().cpu().contiguous()
                out[k] = {"tensor": name}
            else:
                out[k] = {"value": v}
        state[str(pid)] = out
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entry.items()}
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_state_files(folder: str | os.PathLike, optimizer: torch.optim.Optimizer, state: TrainState,
                     train_config: Any, generator: torch.Generator | None = None) -> None:
    """Optimizer moments, RNG states and counters into ``folder`` (pretraining: ``<run>/train_state``; LoRA:
    ``<adapter>/checkpoints/step-N``, beside the adapter files). The caller makes the folder and swaps it in."""
    sdir = Path(folder)
    sdir.mkdir(parents=True, exist_ok=True)
    cfg_dict = train_config.to_dict() if hasattr(train_config, "to_dict") else dict(train_config)
    tensors, meta = optimizer_to_flat(optimizer.state_dict())
    save_file(tensors, str(sdir / "optimizer.safetensors"))
    _write_json(sdir / "optimizer.json", meta)
    rng = {"torch_cpu": torch.get_rng_state()}
    if generator is not None:
        rng["data_generator"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file({k: v.contiguous() for k, v in rng.items()}, str(sdir / "rng.safetensors"))
    _write_json(sdir / "state.json", {"version": STATE_VERSION, "state": asdict(state), "train_config": cfg_dict})


def load_state_files(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor], TrainState,
                                                         dict[str, Any]]:
    """(optimizer state dict, RNG tensors, counters, the run's config) as :func:`save_state_files` wrote them."""
    sdir = Path(folder)
    try:
        doc = json.loads((sdir / "state.json").read_text())
        opt_meta = json.loads((sdir / "optimizer.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{sdir}: training state is unreadable ({e})") from e
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"{sdir}/state.json: version {doc.get('version')} is not supported (expected {STATE_VERSION})")
    known = set(TrainState.__dataclass_fields__)
    state = TrainState(**{k: v for k, v in doc["state"].items() if k in known})
    optimizer_state = optimizer_from_flat(load_file(str(sdir / "optimizer.safetensors")), opt_meta)
    return optimizer_state, load_file(str(sdir / "rng.safetensors")), state, doc.get("train_config", {})


def restore_rng(rng: dict[str, torch.Tensor], device: torch.device | None = None,
                generator: torch.Generator | None = None) -> None:
    """Put back the RNG states :func:`save_state_files` saved (dropout masks, batch order) for an exact resume."""
    torch.set_rng_state(rng["torch_cpu"])
    if generator is not None and "data_generator" in rng:
        generator.set_state(rng["data_generator"])
    if device is not None and device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def save_run(out_dir: str | os.PathLike, model: GPT, tokenizer: Any, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, state: TrainState, train_config: Any) -> Path:
    """Write checkpoint + training state for ``out_dir`` atomically (stage folder, then one swap)."""
    out_dir = Path(out_dir)
    cfg_dict = train_config.to_dict() if hasattr(train_config, "to_dict") else dict(train_config)
    with staged_dir(out_dir) as stage:
        save_checkpoint(stage, model, tokenizer, extra={
            "trained_by": "llm_core.training.train", "step": state.step, "tokens_seen": state.tokens_seen,
            "val_loss": state.last_val_loss, "data": cfg_dict.get("data"), "tokenizer_spec": cfg_dict.get("tokenizer"),
        })
        save_state_files(stage / STATE_DIR, optimizer, state, cfg_dict, generator)
    return out_dir


def has_train_state(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / STATE_DIR / "state.json").is_file()


def load_train_state(out_dir: str | os.PathLike) -> ResumeState | None:
    """Everything :func:`save_run` wrote, or None when ``out_dir`` holds no training state."""
    out_dir = Path(out_dir)
    sdir = out_dir / STATE_DIR
    if not (sdir / "state.json").is_file():
        return None
    optimizer_state, rng, state, train_config = load_state_files(sdir)
    saved_step = read_meta(out_dir).get("extra", {}).get("step")
    if saved_step != state.step:
        raise ValueError(f"{out_dir}: model is from step {saved_step} but the training state from step {state.step}")
    model, tokenizer = load_checkpoint(out_dir)
    if tokenizer is None:
        raise ValueError(f"{out_dir}: checkpoint has no tokenizer; cannot resume")
    return ResumeState(model, tokenizer, optimizer_state, rng, state, train_config)
