"""Cosine noise schedule, timestep respacing and the coefficient tables of the
Gaussian diffusion Diffusion Loss uses.

Tables are computed once in float64 (as the official code does with numpy) and
cast to float32 on first use per device; nothing is re-uploaded per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import TRAIN_DIFFUSION_STEPS
from ..schedules import space_timesteps

MAX_BETA = 0.999
COSINE_S = 0.008


def cosine_betas(num_steps: int = TRAIN_DIFFUSION_STEPS) -> torch.Tensor:
    """betas_t = min(1 - abar(t+1)/abar(t), 0.999), abar(s) = cos((s + 0.008)/1.008 * pi/2)^2."""

    def abar(s: float) -> float:
        return math.cos((s + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), MAX_BETA) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64, device="cpu")


@dataclass
class DiffusionTables:
    """Per-step coefficients of q(x_t|x_0), the posterior q(x_{t-1}|x_t,x_0) and eps->x0.

    All float64 on CPU; `on(device)` gives a float32 copy on a device, cached.
    `timestep_map[i]` is the training timestep the network is told at step i.
    """

    betas: torch.Tensor
    timestep_map: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or not bool(((b > 0) & (b <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        abar = torch.cumprod(1.0 - b, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = b * (1.0 - abar_prev) / (1.0 - abar)
        self.coefs: dict[str, torch.Tensor] = {
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1.0 - abar).sqrt(),
            "sqrt_recip_abar": (1.0 / abar).sqrt(),
            "sqrt_recipm1_abar": (1.0 / abar - 1).sqrt(),
            "post_var": post_var,
            # the posterior variance is 0 at step 0: its log is clipped to step 1's
            "post_logvar": torch.cat([post_var[1:2], post_var[1:]]).log() if len(b) > 1 else b.new_zeros(0),
            "log_betas": b.log(),
            "post_coef1": b * abar_prev.sqrt() / (1.0 - abar),
            "post_coef2": (1.0 - abar_prev) * (1.0 - b).sqrt() / (1.0 - abar),
        }

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    def on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """float32 tables on `device` (and int64 `timestep_map`), computed once per device."""
        key = str(torch.device(device))
        if key not in self._cache:
            t = {k: v.to(device=device, dtype=torch.float32) for k, v in self.coefs.items()}
            t["timestep_map"] = self.timestep_map.to(device)
            self._cache[key] = t
        return self._cache[key]

    def stacked(self, device: torch.device | str) -> torch.Tensor:
        """[S, 6] float32: (sqrt_recip_abar, sqrt_recipm1_abar, post_coef1, post_coef2,
        post_logvar, log_betas) per step: the table the native sampler reads."""
        t = self.on(device)
        key = "_stacked"
        if key not in t:
            t[key] = torch.stack(
                [
                    t["sqrt_recip_abar"],
                    t["sqrt_recipm1_abar"],
                    t["post_coef1"],
                    t["post_coef2"],
                    t["post_logvar"],
                    t["log_betas"],
                ],
                1,
            ).contiguous()
        return t[key]


def make_tables(spacing: str | int = "", num_train_steps: int = TRAIN_DIFFUSION_STEPS) -> DiffusionTables:
    """Tables for the cosine schedule, respaced to `spacing` ("" keeps every step)."""
    base = cosine_betas(num_train_steps)
    kept = space_timesteps(num_train_steps, spacing)
    abar = torch.cumprod(1.0 - base, 0)
    betas, last = [], 1.0
    for i in kept:
        betas.append(1.0 - float(abar[i]) / last)
        last = float(abar[i])
    return DiffusionTables(
        betas=torch.tensor(betas, dtype=torch.float64, device="cpu"),
        timestep_map=torch.tensor(kept, dtype=torch.int64, device="cpu"),
    )
