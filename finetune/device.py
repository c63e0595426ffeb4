"""Pick where and in which precision to train: CUDA or Apple MPS when present, else the CPU; bf16 autocast where
bf16 matmuls are native (CUDA with bf16, CPUs with AMX), else fp32.

The weights stay fp32 on every device (LoRA adapters must train in fp32); under ``torch.autocast(bfloat16)`` the
matrix multiplies run in bf16, which is where the speed and memory win is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from llm_core.precision import native_bf16
from llm_core.training.train_loop import pick_device


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def dtype_name(self) -> str:
        """What ``llm_core.training.train_loop.autocast_for`` calls this choice."""
        return "bfloat16" if self.autocast_dtype == torch.bfloat16 else "float32"

    def describe(self) -> str:
        prec = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.autocast_dtype]
        return f"{self.device.type} ({prec})"


def resolve_device(device: str = "auto", precision: str = "auto") -> DeviceChoice:
    """``device``: auto|cpu|cuda|cuda:N|mps. ``precision``: auto|fp32|bf16 (bf16 only where the device has it)."""
    dev = pick_device(device)  # the one picker, shared with pretraining and the app
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}: expected auto, fp32 or bf16")
    bf16_ok = native_bf16(dev)
    if precision == "bf16" and not bf16_ok:
        raise ValueError(f"bf16 training is not supported on this {dev.type} (it needs CUDA with bf16 or a CPU with "
                         "AMX); use precision 'fp32'")
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_ok)
    return DeviceChoice(dev, torch.bfloat16 if use_bf16 else None)


def max_processes(device: str = "auto") -> int:
    """How many training processes this machine can run at once: one per GPU, else one per CPU core."""
    import os

    if pick_device(device, allow_mps=False).type == "cuda":
        return torch.cuda.device_count()
    return os.cpu_count() or 1
