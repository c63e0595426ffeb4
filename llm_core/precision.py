"""Where bf16 pays: the one question both trainers (pretraining and LoRA) ask before choosing autocast."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 matmuls run natively, and so faster than fp32, on ``device``: CUDA with bf16, or a CPU with
    AMX tiles (Intel Sapphire Rapids and later), where oneDNN multiplies bf16 about 2x faster than fp32 even at
    nanoGPT's tiny shapes. Elsewhere (AVX2 CPUs) bf16 is emulated and slower, so "auto" keeps fp32 there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.cpu._is_amx_tile_supported()) and torch.backends.mkldnn.is_available()
        except AttributeError:  # an older or trimmed torch without the probe
            return False
    return False
