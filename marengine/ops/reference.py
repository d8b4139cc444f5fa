"""Pure PyTorch reference of the head sampler: the test oracle and the fallback.

It runs the way the official sampler runs: eager, one Python iteration per
diffusion step.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..diffusion.gaussian import sample_loop
from ..diffusion.samplers import DDPM, HeadSampler
from ..diffusion.schedule import DiffusionTables
from ..schedules import cfg_combine


def guided_eps_fn(net: nn.Module, tmap: torch.Tensor, z: torch.Tensor, cfg: float):
    """eps_fn(x [N, C], step [N]) -> [N, 2C] for the chain on N rows.

    Without guidance z has N rows. With guidance z has 2N rows (cond, uncond):
    the network sees [x; x], eps is combined, the variance is the conditional half's.
    """
    c = net.in_channels

    def fn(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        t = tmap[step]
        if cfg == 1.0:
            return net(x.to(z.dtype), t, z)
        out = net(torch.cat([x, x]).to(z.dtype), torch.cat([t, t]), z).float()
        cond, uncond = out[: x.shape[0]], out[x.shape[0] :]
        eps = cfg_combine(cond[:, :c], uncond[:, :c], cfg)
        return torch.cat([eps, cond[:, c:]], dim=1)

    return fn


def sample_head(
    net: nn.Module,
    tables: DiffusionTables,
    z: torch.Tensor,
    x_T: torch.Tensor,
    temperature: float,
    cfg: float,
    step_noise: torch.Tensor | None,
    *,
    sampler: HeadSampler = DDPM,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Reverse diffusion -> [N, C] float32. z [N or 2N, Z], x_T [N, C], step_noise [S, N, C] or
    None; `sampler` picks the per-step coefficients (diffusion/samplers.py)."""
    tmap = tables.on(z.device)["timestep_map"]
    table = tables.sampler_table(sampler, z.device)
    flags = tables.sampler_flags(sampler)
    return sample_loop(table, guided_eps_fn(net, tmap, z, cfg), x_T, temperature, step_noise, clip_denoised, flags)
