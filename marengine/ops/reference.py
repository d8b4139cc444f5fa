"""Pure PyTorch reference of the head sampler: the test oracle and the fallback.

It runs the way the official sampler runs: eager, one Python iteration per
diffusion step (with `row_steps`, a step count per chain row).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..diffusion.gaussian import sample_loop, sample_loop_rows
from ..schedules import cfg_combine
from .head_job import HeadJob


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


def sample_head(job: HeadJob) -> torch.Tensor:
    """The job's reverse diffusion -> [N, C] float32, one eager step at a time."""
    tables, dev = job.tables, job.z.device
    tmap = tables.on(dev)["timestep_map"]
    table = tables.sampler_table(job.sampler, dev)
    flags = tables.sampler_flags(job.sampler)
    eps_fn = guided_eps_fn(job.net, tmap, job.z, job.cfg)
    rt = job.row_table()
    if rt is not None:  # each row walks its own table of the stack, rows that finish early keep their value
        return sample_loop_rows(job.x_T, table, rt, eps_fn, job.temperature, job.step_noise, job.clip_denoised)
    return sample_loop(table, eps_fn, job.x_T, job.temperature, job.step_noise, job.clip_denoised, flags)
