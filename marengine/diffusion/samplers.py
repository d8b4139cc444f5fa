"""Reverse-diffusion samplers of the Diffusion-Loss head, as one table of per-step coefficients.

Every sampler here is the same update, with its own coefficients (so the torch reference,
the CPU kernel and the CUDA kernels run one loop for all of them). At step t (from S-1
down to 0), with the guided eps and the variance output v in [-1, 1] of the network:

    x0     = a_t x - b_t eps                      (clamped to [-1, 1] with clip_denoised)
    mean   = c1_t x0 + c2_t x + c3_t x0_prev      (x0_prev: the previous step's x0)
    logvar = f lb_t + (1 - f) lp_t,  f = (v + 1) / 2
    x      = mean + nw_t exp(logvar / 2) noise temperature

`ddpm`      the official ancestral sampler with the learned-range variance (a, b, c1, c2 =
            the posterior's coefficients, lp = clipped posterior log-variance, lb = log beta,
            nw = 1 but at t = 0). Bit-for-bit the official computation.
`ddim`      DDIM (Song et al.) with eta: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev -
            sigma^2) eps' + sigma z, eps' re-derived from the (clipped) x0 as guided-diffusion
            does; sigma = eta sqrt((1 - abar_prev)/(1 - abar) (1 - abar/abar_prev)), a fixed
            variance (lb = lp = log sigma^2). eta = 0 is deterministic.
`dpm++2m`   DPM-Solver++(2M) (Lu et al.), the multistep second-order solver in data
            prediction: x_prev = (sigma_p/sigma_t) x + alpha_p (1 - e^-h)(x0 + (x0 - x0_prev)/(2r)),
            h = lambda_p - lambda_t, r = h_last/h; first order at the first step (and at the
            last solver step below 15 steps); deterministic.
At t = 0 every sampler returns x0 (abar_prev = 1).

Columns of the table ([S, 8], row t): a, b, c1, c2, c3, lp, lb, nw. Everything here is
pure Python (float64), so the torch-free deploy sampler computes the same tables; the
update's arithmetic (`reverse_mean`, `learned_logvar`) is written once here too, for torch
tensors and numpy arrays alike, and the ddpm table's columns are training's posterior
coefficients (diffusion/schedule.DiffusionTables reads them from it).
Deterministic samplers have no per-step noise: `temperature` then scales the starting
noise x_T instead (see `scales_start_noise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ..checks import check_choice, check_float
from ..schedules import space_timesteps

T = TypeVar("T")  # a torch tensor or a numpy array: the update is arithmetic only

SAMPLERS = ("ddpm", "ddim", "dpm++2m")
COLUMNS = ("a", "b", "c1", "c2", "c3", "lp", "lb", "nw")
LOWER_ORDER_FINAL_BELOW = 15  # DPM-Solver++: first order at the last solver step for fewer steps
MAX_BETA, COSINE_S = 0.999, 0.008  # the cosine schedule (Nichol & Dhariwal), as the official code


@dataclass(frozen=True)
class HeadSampler:
    """Which reverse-diffusion sampler the head runs (the number of steps is given per call)."""

    kind: str = "ddpm"
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 ancestral with the posterior variance

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", check_choice("head sampler", self.kind, SAMPLERS))
        object.__setattr__(self, "eta", check_float("DDIM eta", self.eta, 0.0, 1.0))

    @property
    def deterministic(self) -> bool:
        return self.kind == "dpm++2m" or (self.kind == "ddim" and self.eta == 0.0)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.eta:g}" if self.kind == "ddim" else self.kind

    @classmethod
    def parse(cls, text: str | HeadSampler) -> HeadSampler:
        """'ddpm', 'ddim', 'ddim:0.5' (eta), 'dpm++2m' (or a HeadSampler)."""
        if isinstance(text, HeadSampler):
            return text
        if not isinstance(text, str):
            raise TypeError(f"a head sampler is a name such as 'ddpm', 'ddim:0.5' or 'dpm++2m', got {text!r}")
        kind, colon, eta = text.partition(":")
        if kind not in SAMPLERS:
            raise ValueError(f"unknown head sampler {text!r}; choose one of {', '.join(SAMPLERS)} or ddim:ETA")
        if colon and kind != "ddim":
            raise ValueError(f"only ddim takes a parameter (its eta), got {text!r}")
        try:
            value = float(eta) if colon else 0.0
        except ValueError:
            raise ValueError(f"head sampler {text!r}: the eta of ddim:ETA must be a number in [0, 1]") from None
        try:
            return cls(kind, value)
        except ValueError as e:
            raise ValueError(f"head sampler {text!r}: {e}") from None


DDPM = HeadSampler("ddpm")


def scales_start_noise(sampler: HeadSampler) -> bool:
    """Deterministic samplers take the temperature on x_T (they inject no noise later)."""
    return sampler.deterministic


def cosine_betas(num_steps: int) -> list[float]:
    """betas_t = min(1 - abar(t+1)/abar(t), 0.999), abar(s) = cos((s + 0.008)/1.008 * pi/2)^2."""

    def abar(s: float) -> float:
        return math.cos((s + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2

    return [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), MAX_BETA) for i in range(num_steps)]


def respaced(num_train_steps: int, spacing: str | int) -> tuple[list[float], list[int]]:
    """(betas [S], kept training timesteps [S]) of the cosine schedule respaced to `spacing`:
    the kept steps' cumulative products are those of the full schedule."""
    base = cosine_betas(num_train_steps)
    kept = space_timesteps(num_train_steps, spacing)
    abar, cum = [], 1.0
    for b in base:
        cum *= 1.0 - b
        abar.append(cum)
    betas, last = [], 1.0
    for i in kept:
        betas.append(1.0 - abar[i] / last)
        last = abar[i]
    return betas, kept


def reverse_mean(x: T, eps: T, a: Any, b: Any, c1: Any, c2: Any, clip: Callable[[T], T] | None = None) -> tuple[T, T]:
    """The reverse update, written once for torch tensors and numpy arrays alike (arithmetic
    only): x0 = a x - b eps (then `clip`, e.g. to [-1, 1]), mean = c1 x0 + c2 x, with the
    coefficients of a row of `step_table` (scalars, or [N, 1] columns per row). Training's
    posterior, the torch sampler and the deploy sampler all call it. Returns (x0, mean)."""
    x0 = a * x - b * eps
    if clip is not None:
        x0 = clip(x0)
    return x0, c1 * x0 + c2 * x


def learned_logvar(var_values: T, logvar_lo: Any, logvar_hi: Any) -> T:
    """The learned-range variance: v in [-1, 1] interpolates between the clipped posterior
    log-variance (v = -1, column 5) and log beta_t (v = 1, column 6)."""
    frac = (var_values + 1) / 2
    return frac * logvar_hi + (1 - frac) * logvar_lo


def step_table(betas: list[float], sampler: HeadSampler) -> list[list[float]]:
    """[S][8] float64 coefficients (module docstring) of `sampler` from the respaced schedule's
    betas [S]; pure Python, so the torch engine and the torch-free deploy sampler share it."""
    S = len(betas)
    abar, cum = [], 1.0
    for b in betas:
        cum *= 1.0 - b
        abar.append(cum)
    abar_prev = [1.0] + abar[:-1]
    post_var = [b * (1.0 - ap) / (1.0 - a) for b, a, ap in zip(betas, abar, abar_prev)]
    # the posterior variance is 0 at step 0: its log is clipped to step 1's (one step: unused)
    post_logvar = [math.log(post_var[1] if S > 1 else betas[0])] + [math.log(v) for v in post_var[1:]]
    rows = [[math.sqrt(1.0 / a), math.sqrt(1.0 / a - 1.0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] for a in abar]
    if sampler.kind == "ddpm":
        for t, (b, a, ap) in enumerate(zip(betas, abar, abar_prev)):
            rows[t][2:] = [
                b * math.sqrt(ap) / (1.0 - a),
                (1.0 - ap) * math.sqrt(1.0 - b) / (1.0 - a),
                0.0,
                post_logvar[t],
                math.log(b),
                1.0 if t > 0 else 0.0,
            ]
        return rows
    if sampler.kind == "ddim":
        for t, (a, ap) in enumerate(zip(abar, abar_prev)):
            sigma = sampler.eta * math.sqrt(max(0.0, (1 - ap) / (1 - a) * (1 - a / ap)))
            d = math.sqrt(max(0.0, 1.0 - ap - sigma * sigma))
            logvar = math.log(sigma * sigma) if sigma > 0 else 0.0
            rows[t][2:] = [
                math.sqrt(ap) - d / rows[t][1],
                d * rows[t][0] / rows[t][1],
                0.0,
                logvar,
                logvar,
                1.0 if sigma > 0 else 0.0,
            ]
        return rows
    # dpm++2m: data prediction; lambda = log(alpha / sigma)
    alpha = [math.sqrt(a) for a in abar]
    sig = [math.sqrt(1.0 - a) for a in abar]
    lam = [math.log(al) - math.log(s) for al, s in zip(alpha, sig)]
    h_last = None
    for t in range(S - 1, 0, -1):  # solver steps t -> t-1; step 0 returns x0 (below)
        h = lam[t - 1] - lam[t]
        phi = alpha[t - 1] * -math.expm1(-h)  # alpha_p (1 - e^-h)
        rows[t][3] = sig[t - 1] / sig[t]
        if h_last is None or (t == 1 and S < LOWER_ORDER_FINAL_BELOW):
            rows[t][2] = phi
        else:
            r = h_last / h
            rows[t][2], rows[t][4] = phi * (1.0 + 1.0 / (2.0 * r)), -phi / (2.0 * r)
        h_last = h
    rows[0][2:5] = [1.0, 0.0, 0.0]
    return rows
