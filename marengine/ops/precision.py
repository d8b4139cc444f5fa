"""The matmul precision a generation runs in: fp32, bf16, or bf16 where the hardware has units for it.

"bf16" runs the generation under `torch.autocast(dtype=bfloat16)`: the backbone's matmuls
in bf16 (LayerNorm, softmax and the residual stream stay fp32, autocast's rules) and the
native head's GEMM weights in bf16 (its residual stream, LayerNorm statistics and eps stay
fp32). "auto" picks bf16 only where the device multiplies bf16 natively: a CPU whose native
head build is AVX512-BF16 or AMX, or a GPU torch says supports bf16; elsewhere bf16 would be
emulated (slower, and no gain), so "auto" keeps fp32 there.
"""

from __future__ import annotations

import contextlib

import torch

from ..config import SAMPLING_PRECISIONS

BF16_CPU_BUILDS = ("avx512_amx", "avx512_bf16")  # native head builds with bf16 x bf16 -> fp32 units


def bf16_units(device: torch.device | str) -> bool:
    """True when `device` multiplies bf16 in hardware (CPU: AVX512-BF16 or AMX, read from the
    native extension's run-time CPU check; CUDA: torch's bf16 support)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        from . import native
    except ImportError:
        return False
    if native._C is None:
        return False
    return any(b in BF16_CPU_BUILDS for b in native._C.cpu_kernels_supported().split(","))


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """fp32 or bf16 for a generation on `device` ("auto": bf16 where bf16_units says so)."""
    if precision not in SAMPLING_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(SAMPLING_PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if bf16_units(device) else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def precision_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a generation runs in: autocast to bf16, or nothing for fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
