"""The parts of Gaussian diffusion that Diffusion Loss uses: epsilon
prediction with learned-range variance, the training loss (MSE + VLB term) and
the reverse-diffusion loop with temperature for any sampler table (samplers.py).

Every function takes the per-device float32 tables from
`DiffusionTables.on(device)` and step indices `t` (int64, [N]).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .samplers import learned_logvar, reverse_mean

Tables = dict[str, torch.Tensor]
LOG2 = math.log(2.0)


def _clamp(x0: torch.Tensor) -> torch.Tensor:
    return x0.clamp(-1.0, 1.0)


def _at(tab: Tables, name: str, t: torch.Tensor) -> torch.Tensor:
    return tab[name][t].unsqueeze(-1)  # [N, 1]


def q_sample(tab: Tables, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
    return _at(tab, "sqrt_abar", t) * x0 + _at(tab, "sqrt_one_minus_abar", t) * noise


def posterior(tab: Tables, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    mean = _at(tab, "post_coef1", t) * x0 + _at(tab, "post_coef2", t) * xt
    return mean, _at(tab, "post_logvar", t).expand_as(xt)


def p_mean_logvar(
    tab: Tables,
    xt: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    var_values: torch.Tensor,
    clip_denoised: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of p(x_{t-1} | x_t) from predicted eps and the
    learned-range variance output v in [-1, 1] (interpolating log beta_t and
    the clipped posterior log-variance). clip_denoised clamps the x_0
    prediction to [-1, 1] (for data known to lie there; the official sampler
    does not clip latents)."""
    logvar = learned_logvar(var_values, _at(tab, "post_logvar", t), _at(tab, "log_betas", t))
    coefs = (_at(tab, k, t) for k in ("sqrt_recip_abar", "sqrt_recipm1_abar", "post_coef1", "post_coef2"))
    _, mean = reverse_mean(xt, eps, *coefs, clip=_clamp if clip_denoised else None)
    return mean, logvar


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log-likelihood of x in [-1, 1] discretised to 256 bins under N(mean, exp(log_scale)^2)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def training_losses(
    tab: Tables,
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-sample Diffusion Loss terms: loss = mse(eps) + vb (in bits).

    net(x_t, t) -> [N, 2C] (eps, variance values). The VLB term only trains the
    variance: it sees a detached eps.
    """
    xt = q_sample(tab, x0, t, noise)
    out = net(xt, t).float()  # [N, 2C]
    eps, var_values = out.chunk(2, dim=-1)
    true_mean, true_logvar = posterior(tab, x0, xt, t)
    mean, logvar = p_mean_logvar(tab, xt, t, eps.detach(), var_values)
    kl = normal_kl(true_mean, true_logvar, mean, logvar).mean(-1) / LOG2
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).mean(-1) / LOG2
    vb = torch.where(t == 0, nll, kl)
    mse = ((noise - eps) ** 2).mean(-1)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def sample_loop(
    table: torch.Tensor,
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    temperature: float,
    step_noise: torch.Tensor | None,
    clip_denoised: bool = False,
    flags: tuple[Sequence[bool], Sequence[bool]] | None = None,
) -> torch.Tensor:
    """Reverse diffusion from x_T with the per-step coefficients `table` [S, 8] of a sampler
    (diffusion/samplers.py), eagerly, one step per Python iteration (the official sampler's
    structure; the reference oracle of the native kernels).

    eps_fn(x, t) -> [N, 2C] (eps, variance values) at step index t [N]. step_noise: [S, N, C],
    step_noise[i] used at step S-1-i, or None (temperature 0 or a deterministic sampler).
    flags: (reads the previous x0, adds noise) per step as host booleans
    (DiffusionTables.sampler_flags); None reads them from the table once.
    For the ddpm table this is op for op the official p_sample loop.
    """
    x = x_T.float()
    n = x.shape[0]
    x0_prev = torch.zeros_like(x)
    uses_prev, noisy = flags if flags is not None else (table[:, [4, 7]] != 0).cpu().unbind(1)
    for i, step in enumerate(range(table.shape[0] - 1, -1, -1)):
        a, b, c1, c2, c3, lp, lb, _ = table[step]  # 0-d float32 tensors
        out = eps_fn(x, torch.full((n,), step, dtype=torch.int64, device=x.device)).float()
        eps, var_values = out.chunk(2, dim=-1)
        x0, mean = reverse_mean(x, eps, a, b, c1, c2, clip=_clamp if clip_denoised else None)
        if uses_prev[step]:
            mean = mean + c3 * x0_prev
        if noisy[step] and temperature > 0 and step_noise is not None:
            logvar = learned_logvar(var_values, lp, lb)
            x = mean + torch.exp(0.5 * logvar) * step_noise[i] * temperature
        else:
            x = mean
        x0_prev = x0
    return x


def sample_loop_rows(
    x_T: torch.Tensor,
    table: torch.Tensor,
    row_table: torch.Tensor,
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    temperature: float,
    step_noise: torch.Tensor | None,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """`sample_loop` from x_T [N, C] with a step count per row: `table` [T, 8] stacks several samplers' tables
    (schedule.TableStack) and row n, described by row_table[n] = (first, steps), runs steps
    S_n = row_table[n, 1] at table rows first + S_n - 1 down to first, in iterations
    0 .. S_n - 1; after them it keeps its value. eps_fn(x, g) gets the stacked table row g [N]
    of each row. step_noise [S, N, C] (S >= every S_n): step_noise[i, n] at iteration i. With
    every row on the same table this computes what `sample_loop` does, bit for bit. Reads the
    most steps and whether any row reads the previous x0 from the device once (the oracle)."""
    x = x_T.float()
    x0_prev = torch.zeros_like(x)
    first, steps = row_table.long().unbind(1)  # [N], [N]
    iters = int(steps.max()) if steps.numel() else 0
    uses_prev = bool((table[:, 4] != 0).any())
    for i in range(iters):
        g = first + (steps - 1 - i).clamp(min=0)  # [N] this iteration's table row (finished: any)
        running = (steps > i).unsqueeze(1)  # [N, 1]
        a, b, c1, c2, c3, lp, lb, nw = table[g].unsqueeze(2).unbind(1)  # each [N, 1]
        out = eps_fn(x, g).float()
        eps, var_values = out.chunk(2, dim=-1)
        x0, mean = reverse_mean(x, eps, a, b, c1, c2, clip=_clamp if clip_denoised else None)
        if uses_prev:
            mean = mean + c3 * x0_prev
        if temperature > 0 and step_noise is not None:
            logvar = learned_logvar(var_values, lp, lb)
            mean = torch.where(nw != 0, mean + torch.exp(0.5 * logvar) * step_noise[i] * temperature, mean)
        x = torch.where(running, mean, x)
        x0_prev = torch.where(running, x0, x0_prev)
    return x
