"""Pure PyTorch reference of the head sampler: the test oracle and the fallback.

It runs the way the official sampler runs: eager, one Python iteration per
diffusion step (with `row_steps`, a step count per chain row).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..diffusion.gaussian import sample_loop, sample_loop_rows
from ..diffusion.samplers import DDPM, HeadSampler
from ..diffusion.schedule import DiffusionTables, TableStack
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
    tables: DiffusionTables | TableStack,
    z: torch.Tensor,
    x_T: torch.Tensor,
    temperature: float,
    cfg: float,
    step_noise: torch.Tensor | None,
    *,
    sampler: HeadSampler = DDPM,
    clip_denoised: bool = False,
    row_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverse diffusion -> [N, C] float32. z [N or 2N, Z], x_T [N, C], step_noise [S, N, C] or
    None; `sampler` picks the per-step coefficients (diffusion/samplers.py). row_steps [N]: a
    step count per chain row, each one of the TableStack `tables`' counts (S: the most); rows
    with fewer steps finish early."""
    if row_steps is not None:
        return _sample_rows(net, tables, z, x_T, temperature, cfg, step_noise, row_steps, sampler, clip_denoised)
    tmap = tables.on(z.device)["timestep_map"]
    table = tables.sampler_table(sampler, z.device)
    flags = tables.sampler_flags(sampler)
    return sample_loop(table, guided_eps_fn(net, tmap, z, cfg), x_T, temperature, step_noise, clip_denoised, flags)


def _sample_rows(net, stack: TableStack, z, x_T, temperature, cfg, step_noise, row_steps, sampler, clip_denoised):
    row_steps = stack.check_row_steps(row_steps, x_T.shape[0])
    tmap = stack.on(z.device)["timestep_map"]
    table = stack.sampler_table(sampler, z.device)
    rt = stack.row_table(row_steps.to(z.device))
    return sample_loop_rows(x_T, table, rt, guided_eps_fn(net, tmap, z, cfg), temperature, step_noise, clip_denoised)
