"""Backend choice for the head sampler: the native kernel where it is built, else the reference."""

from __future__ import annotations

import contextlib
import logging

import torch

from ..config import HEAD_BACKENDS as BACKENDS
from ..diffusion.samplers import DDPM, HeadSampler
from ..diffusion.schedule import DiffusionTables, TableStack
from . import reference
from .head_job import HeadJob

log = logging.getLogger("marengine.ops")


def native_available(device: torch.device | str = "cpu") -> bool:
    """True when the compiled sampler is built for `device`'s type."""
    try:
        from . import native
    except ImportError:
        return False
    return native.available(torch.device(device))


def native_unsupported(net, device: torch.device) -> str | None:
    """Why the native sampler can't take this head on `device` (None: it can)."""
    try:
        from . import native
    except ImportError as e:
        return f"native module unavailable ({e})"
    return native.unsupported(net, device)


def weights_frozen() -> contextlib.AbstractContextManager:
    """A block in which the head's weights do not change (one generation): the native
    sampler then checks their bytes once, not on every call. A no-op without it."""
    try:
        from . import native
    except ImportError:
        return contextlib.nullcontext()
    return native.weights_frozen()


def sample_head(
    net,
    tables: DiffusionTables | TableStack,
    z: torch.Tensor,
    x_T: torch.Tensor,
    temperature: float,
    cfg: float,
    step_noise: torch.Tensor | None,
    backend: str = "auto",
    clip_denoised: bool = False,
    sampler: HeadSampler = DDPM,
    row_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The head's reverse diffusion -> [N, C] fp32 (the arguments: ops/head_job.py's HeadJob) on
    the native kernels where they are built and take this head (backend="auto"), else the
    PyTorch reference; "native" / "torch" force one. A kernel configuration that failed its
    first-use self-check (selfcheck.py, MARENGINE_SELFCHECK) runs on the reference under
    "auto" and raises under "native"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if (row_steps is not None) != isinstance(tables, TableStack):
        raise ValueError("row_steps [N] (a step count per row) and a TableStack of their tables go together")
    job = HeadJob(net, tables, z, x_T, temperature, cfg, step_noise, sampler, clip_denoised, row_steps)
    why_not = native_unsupported(net, z.device) if backend != "torch" else "backend='torch'"
    if backend == "native" and why_not:
        raise RuntimeError(
            f"backend='native' asked for, but the native sampler cannot run here: {why_not}; "
            "build it with `pip install --no-build-isolation -e .` or use backend='auto'"
        )
    if why_not is None:
        from . import native, selfcheck

        # the first use of a kernel configuration is checked against the reference (selfcheck.py)
        why_not = selfcheck.failure(job)
        if why_not is None:
            log.debug("head sampler: native (%s, %s)", z.device.type, sampler.key)
            return native.sample_head(job)
        if backend == "native":
            raise RuntimeError(f"backend='native' asked for, but {why_not}; use backend='auto'")
    log.debug("head sampler: torch reference (%s: %s)", z.device.type, why_not)
    return reference.sample_head(job)
