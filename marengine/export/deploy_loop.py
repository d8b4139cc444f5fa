"""The MAR loop of the torch-free deploy sampler (numpy + onnxruntime).

The same loop as marengine/models/masked_ar.py, over an exported backbone and head: a
random order per image (over the unknown tokens only when some are given), the plan of
the generation (torch-free: marengine.schedules.generation_plan, as the torch loop), CFG by doubling the batch with the
null class, and the head's reverse diffusion one head.onnx step at a time with the
sampler update of diffusion/samplers.py (the same pure-Python coefficient tables as the
torch engine; the update itself is written again here in numpy because this path may
not import torch). Head samplers and per-iteration step schedules as in the engine;
backbone caching is not available here (the exported backbone is one graph).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..checks import check_finite_result, check_labels, check_sampling
from ..config import TRAIN_DIFFUSION_STEPS
from ..diffusion.samplers import (
    DDPM,
    HeadSampler,
    learned_logvar,
    respaced,
    reverse_mean,
    scales_start_noise,
    step_table,
)
from ..schedules import CFG_SCHEDULES, cfg_combine, generation_plan, step_schedule

if TYPE_CHECKING:
    from .deploy import DeployedMAR

# noise(step, rows, num_steps, stochastic) -> (x_T [rows, C], step_noise [num_steps, rows, C] or None)
NoiseFn = Callable[[int, int, int, bool], "tuple[np.ndarray, np.ndarray | None]"]


def head_table(dm: DeployedMAR, steps: int | str | None, sampler: HeadSampler) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients [S, 8] float32, training timesteps [S] int64) for `steps` diffusion steps
    (None: the exported model's num_sampling_steps), made once per (steps, sampler)."""
    spacing = str(dm.meta["config"]["num_sampling_steps"] if steps is None else steps)
    key = (spacing, sampler.key)
    if key not in dm.head_tables:
        betas, kept = respaced(TRAIN_DIFFUSION_STEPS, spacing)
        table = np.asarray(step_table(betas, sampler), dtype=np.float64).astype(np.float32)
        dm.head_tables[key] = (table, np.asarray(kept, dtype=np.int64))
    return dm.head_tables[key]


def head_loop(
    dm: DeployedMAR,
    z: np.ndarray,
    x_T: np.ndarray,
    temperature: float,
    cfg: float,
    step_noise: np.ndarray | None,
    table: np.ndarray,
    timesteps: np.ndarray,
    clip_denoised: bool = False,
) -> np.ndarray:
    """Tokens [N, C] from z [N, Z] (or [2N, Z]: cond then uncond when cfg != 1); step_noise[i]
    is used at step S-1-i (as marengine.diffusion.gaussian.sample_loop)."""
    c = dm.channels
    x = np.asarray(x_T, dtype=np.float32)
    n = x.shape[0]
    guided = cfg != 1.0
    x0_prev = np.zeros_like(x)
    for i, step in enumerate(range(table.shape[0] - 1, -1, -1)):
        a, b, c1, c2, c3, lp, lb, nw = table[step]  # float32 scalars
        t = np.full((2 * n if guided else n,), timesteps[step], dtype=np.int64)
        out = dm.head(np.concatenate([x, x]) if guided else x, t, z).astype(np.float32, copy=False)
        if guided:
            cond, uncond = out[:n], out[n:]
            eps, var_values = cfg_combine(cond[:, :c], uncond[:, :c], np.float32(cfg)), cond[:, c:]
        else:
            eps, var_values = out[:, :c], out[:, c:]
        x0, mean = reverse_mean(x, eps, a, b, c1, c2, clip=_clip if clip_denoised else None)
        if c3 != 0:
            mean = mean + c3 * x0_prev
        if nw != 0 and temperature > 0 and step_noise is not None:
            logvar = learned_logvar(var_values, lp, lb)
            x = mean + np.exp(np.float32(0.5) * logvar) * step_noise[i] * np.float32(temperature)
        else:
            x = mean
        x0_prev = x0
    return x.astype(np.float32, copy=False)


def _clip(x0: np.ndarray) -> np.ndarray:
    return np.clip(x0, np.float32(-1), np.float32(1))


def default_noise(rng: np.random.Generator, channels: int, temperature: float) -> NoiseFn:
    def fn(step: int, rows: int, num_steps: int, stochastic: bool) -> tuple[np.ndarray, np.ndarray | None]:
        x_T = rng.standard_normal((rows, channels), dtype=np.float32)
        sn = None
        if temperature > 0 and stochastic:
            sn = rng.standard_normal((num_steps, rows, channels), dtype=np.float32)
        return x_T, sn

    return fn


def random_orders(rng: np.random.Generator, bsz: int, seq_len: int, known: np.ndarray | None = None) -> np.ndarray:
    """[B, L] int64: a random permutation per row; with `known` [B, L] bool, the unknown
    positions first (randomly) and the known ones last (the loop reveals from the end)."""
    keys = rng.random((bsz, seq_len))
    if known is not None:
        keys = keys + known * 2.0
    return np.argsort(keys, axis=1, kind="stable").astype(np.int64)


def sample_tokens(
    dm: DeployedMAR,
    labels: Sequence[int] | np.ndarray | None,
    num_iter: int,
    cfg: float = 1.0,
    cfg_schedule: str = "linear",
    temperature: float = 1.0,
    *,
    seed: int = 0,
    bsz: int | None = None,
    orders: np.ndarray | None = None,
    noise: NoiseFn | None = None,
    progress: bool = False,
    sampler: str | HeadSampler = DDPM,
    steps: int | str | Sequence[int] | None = None,
    clip_denoised: bool | None = None,
    known_tokens: np.ndarray | None = None,
    known_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Tokens [B, L, C] float32 for class `labels` (None: the null class, `bsz` images).

    orders [B, L] and noise (see NoiseFn) default to draws from PCG64(seed): orders first,
    then per MAR step x_T and the per-step noise of the conditional rows. clip_denoised:
    None follows the tokenizer (on for pixel tokens). known_tokens [B, L, C] / known_mask
    [B, L] bool: editing, the given tokens are kept exactly.
    """
    if labels is not None:
        labels = np.asarray(check_labels(labels, dm.meta["sampling"]["class_num"]), dtype=np.int64)
        bsz = len(labels)
    bsz, num_iter, cfg, cfg_schedule, temperature = check_sampling(
        dm.seq_len, 1 if bsz is None else bsz, num_iter, cfg, cfg_schedule, temperature, CFG_SCHEDULES
    )
    sampler = HeadSampler.parse(sampler)
    step_schedule(steps, num_iter)  # checked before any work
    clip = dm.bounded if clip_denoised is None else bool(clip_denoised)
    L, C = dm.seq_len, dm.channels
    known = _check_known(known_tokens, known_mask, bsz, L, C)
    rng = np.random.Generator(np.random.PCG64(seed))
    if orders is None:
        orders = random_orders(rng, bsz, L, None if known is None else known[1])
    orders = np.asarray(orders, dtype=np.int64)
    if orders.shape != (bsz, L) or not (np.sort(orders, 1) == np.arange(L)).all():
        raise ValueError(f"orders must be [{bsz}, {L}] permutations of 0..{L - 1}, got shape {orders.shape}")
    noise = noise or default_noise(rng, C, temperature)
    guided = cfg != 1.0
    lab = labels if labels is not None else np.zeros(bsz, np.int64)
    unc = np.full(bsz, labels is None)
    if guided:
        lab, unc = np.concatenate([lab, np.zeros(bsz, np.int64)]), np.concatenate([unc, np.ones(bsz, bool)])

    tokens = np.zeros((bsz, L, C), np.float32)
    mask = np.ones((bsz, L), bool)  # True = still unknown
    if known is not None:
        tokens = np.where(known[1][..., None], known[0], np.float32(0)).astype(np.float32)
        mask = ~known[1]
    num_masked = int(mask[0].sum()) if bsz else L
    if num_masked == 0:
        return tokens
    for it in generation_plan(L, num_iter, num_masked, cfg, cfg_schedule, steps):
        known_idx = np.nonzero(~mask)[1].reshape(bsz, L - num_masked).astype(np.int64)  # [B, K] sorted
        x_in, idx_in = (tokens, known_idx)
        if guided:
            x_in, idx_in = np.concatenate([tokens, tokens]), np.concatenate([known_idx, known_idx])
        z = dm.backbone(x_in, idx_in, lab, unc)  # [B(x2), L, D]
        mask_next = np.zeros((bsz, L), bool)
        np.put_along_axis(mask_next, orders[:, : it.mask_len], True, axis=1)
        to_pred = mask if it.last else mask & ~mask_next
        rows, cols = np.nonzero(to_pred)  # row-major, as the torch engine's nonzero
        zs = z[:bsz][rows, cols]
        if guided:
            zs = np.concatenate([zs, z[bsz:][rows, cols]])
        table, timesteps = head_table(dm, it.head_steps, sampler)
        x_T, step_noise = noise(it.step, len(rows), table.shape[0], not sampler.deterministic)
        if scales_start_noise(sampler):
            x_T = x_T * np.float32(temperature)
        tokens = tokens.copy()
        tokens[rows, cols] = head_loop(dm, zs, x_T, temperature, it.cfg, step_noise, table, timesteps, clip)
        mask, num_masked = mask_next, it.mask_len
        if progress:
            print(f"step {it.step + 1}/{num_iter}: {len(rows)} tokens", file=sys.stderr)
    check_finite_result(bool(np.isfinite(tokens).all()), "latents", cfg, temperature)
    return tokens


def _check_known(
    tokens: np.ndarray | None, mask: np.ndarray | None, bsz: int, L: int, C: int
) -> tuple[np.ndarray, np.ndarray] | None:
    if (tokens is None) != (mask is None):
        raise ValueError("give known_tokens and known_mask together (or neither)")
    if tokens is None:
        return None
    tokens, mask = np.asarray(tokens, dtype=np.float32), np.asarray(mask)
    if tokens.shape != (bsz, L, C) or mask.shape != (bsz, L):
        raise ValueError(
            f"known_tokens must be [{bsz}, {L}, {C}] and known_mask [{bsz}, {L}], got {tokens.shape} and {mask.shape}"
        )
    if mask.dtype != bool:
        raise TypeError(f"known_mask must be a bool array (True = the token is given), got {mask.dtype}")
    counts = mask.sum(1)
    if bsz and (counts != counts[0]).any():
        raise ValueError(f"every image must have the same number of known tokens, got {sorted(set(counts.tolist()))}")
    if not np.isfinite(tokens[mask]).all():
        raise ValueError("known_tokens are not finite (NaN or inf) at known positions")
    return tokens, mask
