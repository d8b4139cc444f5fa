"""Cosine noise schedule, timestep respacing and the coefficient tables of the
Gaussian diffusion Diffusion Loss uses.

Tables are computed once in float64 (as the official code does with numpy) and
cast to float32 on first use per device; nothing is re-uploaded per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import TRAIN_DIFFUSION_STEPS
from . import samplers
from .samplers import HeadSampler


def cosine_betas(num_steps: int = TRAIN_DIFFUSION_STEPS) -> torch.Tensor:
    """The cosine schedule's betas [num_steps] (float64, CPU)."""
    return torch.tensor(samplers.cosine_betas(num_steps), dtype=torch.float64, device="cpu")


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
        self._beta_values = b.tolist()  # host floats for the sampler tables, read once here (never in a loop)
        abar = torch.cumprod(1.0 - b, 0)
        # the reverse update's coefficients come from the one table (samplers.step_table, DDPM
        # columns): training's posterior and every sampling path read the same numbers
        ddpm = torch.tensor(self._sampler_rows(samplers.DDPM), dtype=torch.float64, device="cpu")  # [S, 8]
        self.coefs: dict[str, torch.Tensor] = {
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1.0 - abar).sqrt(),
            "sqrt_recip_abar": ddpm[:, 0],
            "sqrt_recipm1_abar": ddpm[:, 1],
            "post_coef1": ddpm[:, 2],
            "post_coef2": ddpm[:, 3],
            "post_logvar": ddpm[:, 5],  # clipped at step 0 to step 1's (step 0 adds no noise)
            "log_betas": ddpm[:, 6],
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

    def sampler_table(self, sampler: HeadSampler, device: torch.device | str) -> torch.Tensor:
        """[S, 8] float32 coefficients of `sampler` (diffusion/samplers.py) on `device`, computed
        once per (sampler, device): the table the reference loop and the native kernels read."""
        t = self.on(device)
        key = "_sampler:" + sampler.key
        if key not in t:
            rows = self._sampler_rows(sampler)
            t[key] = torch.tensor(rows, dtype=torch.float64).to(device=device, dtype=torch.float32).contiguous()
        return t[key]

    def sampler_flags(self, sampler: HeadSampler) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """Per step (index s): whether the update reads the previous x0 (column 4) and whether it
        adds noise (column 7): host booleans, so a loop branches without reading the device."""
        rows = self._sampler_rows(sampler)
        return tuple(r[4] != 0 for r in rows), tuple(r[7] != 0 for r in rows)

    def _sampler_rows(self, sampler: HeadSampler) -> list[list[float]]:
        key = "_rows:" + sampler.key
        if key not in self._cache:
            self._cache[key] = samplers.step_table(self._beta_values, sampler)
        return self._cache[key]


def make_tables(spacing: str | int = "", num_train_steps: int = TRAIN_DIFFUSION_STEPS) -> DiffusionTables:
    """Tables for the cosine schedule, respaced to `spacing` ("" keeps every step)."""
    betas, kept = samplers.respaced(num_train_steps, spacing)
    return DiffusionTables(
        betas=torch.tensor(betas, dtype=torch.float64, device="cpu"),
        timestep_map=torch.tensor(kept, dtype=torch.int64, device="cpu"),
    )
