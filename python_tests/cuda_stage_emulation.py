"""A float32 PyTorch stand-in for torch.ops.marengine_stages (csrc/cuda/stages_cuda.cpp), for
dry runs of python_tests/test_cuda_stages.py on a machine without a GPU:

    MARENGINE_STAGES_EMULATE=1 pytest python_tests/test_cuda_stages.py -q

Every stage operator is computed here on the CPU with the semantics the CUDA stage has (its
signature, argument order, output dtypes and shapes). That checks the harness (inputs,
references, tolerances, stage names) before a GPU is lent; it checks nothing about the CUDA
kernels. scripts/gpu_check.sh runs it when it finds no GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from marengine.ops.native import LIMITS
from marengine.schedules import cfg_combine

# csrc/kernel_limits.h, as the extension reports it (its CPU build is enough)
PERSISTENT_MAX_ROWS = LIMITS.get("cuda_persistent_max_rows")
MOD_ROWS_TARGET, MOD_BUDGET = LIMITS.get("cuda_mod_rows_target"), LIMITS.get("cuda_mod_budget_bytes")


def gemm(A, B, bias, residual, gate, epi, small_tiles):
    acc = A.float() @ B.float().T + bias.float()
    if epi == 0:
        return F.silu(acc).to(B.dtype)
    if epi == 1:
        return residual.float() + gate.float()[:, : B.shape[0]] * acc
    return acc


def _ln_mod(h, ln_w, ln_b, mods, shift_col, dtype):
    W = h.shape[1]
    n = F.layer_norm(h.float(), (W,), eps=1e-6)
    if ln_w is not None:
        n = n * ln_w.float() + ln_b.float()
    return (n * (1 + mods[:, shift_col + W : shift_col + 2 * W]) + mods[:, shift_col : shift_col + W]).to(dtype)


def ln_modulate(h, ln_w, ln_b, mods, shift_col, dtype, blocks=0):
    return _ln_mod(h, ln_w, ln_b, mods, shift_col, dtype)


def silu_rows(t_emb, c_emb, i0, rows, dtype, blocks=0):
    S, R = t_emb.shape[0], c_emb.shape[0]
    q = torch.arange(rows)
    return F.silu(t_emb[S - 1 - (i0 + q // R)] + c_emb[q % R]).to(dtype)


def _noise(step_noise, seed, offset, S, N, C):
    if step_noise is not None:
        return step_noise
    from marengine import _C

    return _C.philox_normals(seed, offset, 0, S * N * C).reshape(S, N, C)


def update_f32(x, x0_prev, outr, coefs, it, cfg, temperature, noise, clip):
    """The sampler update of iteration `it`, float32, op for op as diffusion/gaussian.py
    sample_loop and the CUDA reverse_update compute it; noise [S, N, C] or None. Returns (x, x0)."""
    N, C = x.shape
    S = coefs.shape[0]
    a, b, c1, c2, c3, lp, lb, nw = coefs[S - 1 - it]
    eps, v = outr[:N, :C], outr[:N, C:]
    if outr.shape[0] != N:
        eps = cfg_combine(eps, outr[N:, :C], cfg)
    x0 = a * x - b * eps
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    mean = c1 * x0 + c2 * x
    if c3 != 0:
        mean = mean + c3 * (x0_prev if it > 0 else torch.zeros_like(x))
    if nw != 0 and temperature > 0 and noise is not None:
        frac = (v + 1) / 2
        logvar = frac * lb + (1 - frac) * lp
        mean = mean + torch.exp(0.5 * logvar) * noise[it] * temperature
    return mean, x0


def update(x, x0_prev, outr, coefs, it, cfg, temperature, step_noise, seed, offset, clip, blocks=0):
    N, C = x.shape
    S = coefs.shape[0]
    nw = coefs[S - 1 - it][7]
    noise = _noise(step_noise, seed, offset, S, N, C) if nw != 0 and temperature > 0 else None
    return update_f32(x, x0_prev, outr, coefs, it, cfg, temperature, noise, clip)


def row_pre(
    x, x0_prev, outr, coefs, in_w, in_b, ln_w0, ln_b0, mods0, t_emb, c_emb, i, cfg, temperature, step_noise, seed,
    offset, clip, make_y, dtype, blocks=0,
):  # fmt: skip
    N, R, W = x.shape[0], outr.shape[0], in_w.shape[0]
    x0p = x0_prev.clone()
    if i > 0:
        x, x0p = update(x, x0_prev, outr, coefs, i - 1, cfg, temperature, step_noise, seed, offset, clip)
    h = x @ in_w.float().T + in_b.float()
    if R != N:
        h = torch.cat([h, h])
    a = _ln_mod(h, ln_w0, ln_b0, mods0, 0, dtype) if mods0 is not None else torch.empty(0, W, dtype=dtype)
    S = coefs.shape[0]
    y = F.silu(t_emb[S - 1 - i] + c_emb).to(dtype) if make_y else torch.empty(0, W, dtype=dtype)
    return x.clone(), x0p, h, a, y


def grid_barrier(like, rounds, blocks=0):
    return [0, blocks if blocks > 0 else 2, 0]


def plan(like, N, R, C, W, D, S, dtype, path=-1):
    if PERSISTENT_MAX_ROWS is None:
        raise RuntimeError("the stage emulation takes the CUDA limits from marengine._C: build its CPU part")
    if path == -1:
        path = 0 if R <= PERSISTENT_MAX_ROWS else 1
    chunk = 1
    if path == 0:
        per_step = R * W * ((3 * D + 2) * 4 + torch.empty(0, dtype=dtype).element_size())
        by_mem = min(S, max(1, MOD_BUDGET // per_step))
        chunk = max(1, min(S, math.ceil(MOD_ROWS_TARGET / max(R, 1)), by_mem))
    return [path, chunk, 1, 1]
