"""The arguments of MAR's official `sample_tokens` signature, shared by every member's loop.

`MAR.sample_tokens` and `CausalAR.sample_tokens` keep the official signature; they gather its
arguments (and the keyword options every loop takes: generator, backend, clip_denoised) into
one `SampleArgs`, checked once here, and hand it to their loop (masked_ar, ar_sampling) with
the loop's own options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..checks import check_sampling
from ..schedules import CFG_SCHEDULES
from ..utils import check_generator

COMMON_OPTIONS = ("generator", "backend", "clip_denoised")  # keyword options of every member's loop


def check_sampling_args(
    model: Any,
    bsz: Any,
    num_iter: Any,
    cfg: Any,
    cfg_schedule: Any,
    labels: torch.Tensor | None,
    temperature: Any,
    generator: torch.Generator | None = None,
) -> tuple[int, int, float, str, float]:
    """Every check a sampler makes before its work: the model has weights, the generator is
    one, labels are [bsz] class indices; returns the checked (bsz, num_iter, cfg,
    cfg_schedule, temperature)."""
    model.check_weights()
    check_generator(generator)
    out = check_sampling(model.seq_len, bsz, num_iter, cfg, cfg_schedule, temperature, CFG_SCHEDULES)
    if labels is not None:
        model._check_labels(labels, out[0])
    return out


@dataclass
class SampleArgs:
    """bsz, num_iter, cfg, cfg_schedule, labels [bsz] or None, temperature, progress (the
    official positional arguments), and the options every loop takes: generator (all
    randomness), backend (the diffusion head's kernels), clip_denoised."""

    bsz: int
    num_iter: int | None
    cfg: float
    cfg_schedule: str
    labels: torch.Tensor | None
    temperature: float
    progress: bool = False
    generator: torch.Generator | None = None
    backend: str = "auto"
    clip_denoised: bool = False

    @classmethod
    def take(cls, *official: Any, options: dict[str, Any]) -> SampleArgs:
        """The official positional arguments plus the common options popped from `options`
        (what is left there are the loop's own)."""
        return cls(*official, **{k: options.pop(k) for k in COMMON_OPTIONS if k in options})

    def checked(self, model: Any) -> SampleArgs:
        """A copy with bsz, num_iter, cfg, cfg_schedule and temperature checked for `model`."""
        bsz, num_iter, cfg, cfg_schedule, temperature = check_sampling_args(
            model, self.bsz, self.num_iter, self.cfg, self.cfg_schedule, self.labels, self.temperature, self.generator
        )
        return dataclasses.replace(
            self, bsz=bsz, num_iter=num_iter, cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature
        )
