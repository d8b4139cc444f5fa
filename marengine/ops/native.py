"""Python side of the native head kernels (`torch.ops.marengine.*`, built as `marengine._C`).

- `available(device)`: whether the compiled sampler runs on that device type.
- `sample_head(job)`: drop-in for `reference.sample_head` (a `HeadJob`): the whole reverse
  diffusion in one operator call (`head_sample`), noise given per step (bit-compatible with
  the reference chain). `sample_head_philox(job, seed, offset)` draws the noise inside the
  kernel from (seed, offset) instead (see csrc/philox.h; advance `offset` by `philox_groups(...)`
  between calls that must not share noise).
  With a job's `row_steps` [N] (a step count per chain row), still one call (a row_table: each row
  walks its own table of a diffusion.schedule.TableStack; rows that finish early keep their value).
- `adaln_block(...)`: one fused AdaLN residual block (testing / building block).
- `release_caches()`: free the packed weights and workspaces kept between calls.
- `cuda_unsupported(...)`: the CUDA kernels' limits applied to a head's sizes.
- Fake (meta) kernels for both ops, so torch.compile and export can trace through them.

Re-exported here, defined below it: `_C`, `LIMITS`, `WEIGHT_DTYPES`, `push_knobs` (ops/extension.py:
loading the extension, tolerantly: if it is missing `available()` is False and nothing raises at
import) and `weights_frozen`, `collect_weights`, `content_fingerprint`, `embeddings` (ops/head_weights.py:
the kernels' weight operands).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .extension import _C, _LOAD_ERROR, LIMITS, WEIGHT_DTYPES, push_knobs  # noqa: F401  (re-exported)
from .head_job import HeadJob
from .head_weights import (  # noqa: F401  (re-exported: the kernels' weight operands)
    HeadWeights,
    collect_weights,
    content_fingerprint,
    embeddings,
    pick_weight_dtype,
    release_weight_cache,
    weights_frozen,
)


def available(device: torch.device | str = "cpu") -> bool:
    """True when `torch.ops.marengine.head_sample` has a kernel for `device`'s type."""
    if _C is None:
        return False
    dev = torch.device(device)
    if dev.type == "cpu":
        return True
    op = torch.ops.marengine.head_sample.default  # OpOverload's public query of the dispatcher
    return dev.type == "cuda" and bool(LIMITS["cuda_built"]) and op.has_kernel_for_dispatch_key("CUDA")


def unsupported(net: nn.Module, device: torch.device | str) -> str | None:
    """Why the native sampler cannot run this head on `device`, or None when it can (the CUDA
    kernels' limits come from the extension: csrc/kernel_limits.h; the CPU kernels have none)."""
    dev = torch.device(device)
    if not available(dev):
        return f"not built for {dev.type}"
    if dev.type == "cuda":
        return cuda_unsupported(net.model_channels, net.num_res_blocks, net.in_channels)
    return None


def cuda_unsupported(width: int, depth: int, channels: int) -> str | None:
    """Why the CUDA kernels cannot take a width x depth head on `channels` token channels (None: they can)."""
    multiple = LIMITS["cuda_width_multiple"]
    if width % multiple:
        return f"head width {width} is not a multiple of {multiple}"
    if channels > LIMITS["cuda_max_channels"]:
        return f"{channels} token channels exceed {LIMITS['cuda_max_channels']}"
    if depth > LIMITS["cuda_max_depth"]:
        return f"{depth} res blocks exceed {LIMITS['cuda_max_depth']}"
    return None


def _require(device: torch.device) -> None:
    push_knobs()
    if not available(device):
        why = f" ({_LOAD_ERROR})" if _LOAD_ERROR is not None else ""
        raise RuntimeError(
            f"the native head sampler is not available for {device.type}{why}; "
            "build it with `pip install --no-build-isolation -e .` or use the torch backend"
        )


# ---------------------------------------------------------------------------- fake kernels
def _same_device(op: str, ref: torch.Tensor, tensors: dict[str, torch.Tensor | None]) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(
                f"{op}: all tensors must be on one device; x is on {ref.device} but {name} is on {t.device}"
            )


if _C is not None:
    # torch._check is the documented way to state a fake kernel's conditions (no public alias)

    @torch.library.register_fake("marengine::adaln_block")
    def _adaln_block_fake(x, mod, ln_w, ln_b, w1, b1, w2, b2):
        _same_device("marengine::adaln_block", x, dict(mod=mod, ln_w=ln_w, ln_b=ln_b, w1=w1, b1=b1, w2=w2, b2=b2))
        torch._check(x.dim() == 2, lambda: "marengine::adaln_block: x must be [M, W]")
        torch._check(x.dtype == torch.float32, lambda: "marengine::adaln_block: x must be float32")
        return torch.empty_like(x)

    @torch.library.register_fake("marengine::head_sample")
    def _head_sample_fake(
        x_T,
        c_emb,
        t_emb,
        in_w,
        in_b,
        ln_w,
        ln_b,
        mod_w,
        mod_b,
        w1,
        b1,
        w2,
        b2,
        fmod_w,
        fmod_b,
        out_w,
        out_b,
        coefs,
        cfg,
        temperature,
        step_noise,
        seed,
        offset,
        clip_denoised=False,
        row_table=None,
        max_steps=0,
    ):
        named = dict(
            c_emb=c_emb,
            t_emb=t_emb,
            in_w=in_w,
            in_b=in_b,
            fmod_w=fmod_w,
            fmod_b=fmod_b,
            out_w=out_w,
            out_b=out_b,
            coefs=coefs,
            step_noise=step_noise,
            row_table=row_table,
        )
        for name, lst in dict(ln_w=ln_w, ln_b=ln_b, mod_w=mod_w, mod_b=mod_b, w1=w1, b1=b1, w2=w2, b2=b2).items():
            named.update({f"{name}[{i}]": t for i, t in enumerate(lst)})
        _same_device("marengine::head_sample", x_T, named)
        torch._check(x_T.dim() == 2, lambda: "marengine::head_sample: x_T must be [N, C]")
        torch._check(x_T.dtype == torch.float32, lambda: "marengine::head_sample: x_T must be float32")
        return torch.empty_like(x_T)


# ---------------------------------------------------------------------------- samplers
def _run(job: HeadJob, seed: int, offset: int, weight_dtype: torch.dtype | None) -> torch.Tensor:
    dev = job.z.device
    _require(dev)
    job.check_rows()
    net, temperature = job.net, job.temperature
    with torch.no_grad():
        w = collect_weights(net, pick_weight_dtype(net, dev, weight_dtype), dev)
        c_emb, t_emb = embeddings(net, job.tables, job.z)
        coefs = job.tables.sampler_table(job.sampler, dev)
        rt = job.row_table()  # per-row step counts: [N, 2] into the stacked tables, else None
        noise = job.step_noise.float().contiguous() if job.step_noise is not None and temperature > 0 else None
        return torch.ops.marengine.head_sample(
            job.x_T.float().contiguous(),
            c_emb,
            t_emb,
            *w.args(),
            coefs,
            float(job.cfg),
            float(temperature),
            noise,
            int(seed),
            int(offset),
            bool(job.clip_denoised),
            rt,
            job.tables.num_steps if rt is not None else 0,
        )


def sample_head(job: HeadJob, *, weight_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The job's reverse diffusion -> [N, C] fp32, same contract as `reference.sample_head`
    (step_noise is needed when temperature > 0). weight_dtype: GEMM weight precision (default:
    the net's dtype, or the autocast dtype when autocast is enabled)."""
    if job.temperature > 0 and job.step_noise is None and not job.sampler.deterministic:
        raise ValueError("temperature > 0 needs step_noise [S, N, C]; use sample_head_philox for in-kernel noise")
    return _run(job, 0, 0, weight_dtype)


def sample_head_philox(
    job: HeadJob, seed: int, offset: int = 0, *, weight_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Like `sample_head`, with the per-step noise drawn in the kernel (Philox4x32-10, csrc/philox.h);
    the job carries no step_noise.

    The same (seed, offset) gives the same result on the same device; calls that must use
    fresh noise advance offset by `philox_groups(tables.num_steps, N, C)`.
    """
    if job.step_noise is not None:
        raise ValueError("sample_head_philox draws the noise in the kernel: give it a job with step_noise=None")
    if seed < -(2**63) or seed >= 2**64:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    seed = seed - 2**64 if seed >= 2**63 else seed
    return _run(job, seed, offset, weight_dtype)


def release_caches() -> None:
    """Free what the CPU kernel keeps between calls (packed weights, per-thread workspaces:
    up to MARENGINE_CPU_WORKSPACE_MB per thread) and the converted-weight cache here."""
    release_weight_cache()
    if _C is not None:
        _C.release_cpu_caches()


def philox_groups(steps: int, rows: int, channels: int) -> int:
    """Philox groups (of four normals) one head_sample call consumes: the offset stride."""
    return math.ceil(steps * rows * channels / 4)


def adaln_block(
    x: torch.Tensor,
    mod: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """x + gate * (W2 SiLU(W1 (LN(x)(1 + scale) + shift) + b1) + b2); mod = (shift, scale, gate)."""
    _require(x.device)
    return torch.ops.marengine.adaln_block(x, mod, ln_w, ln_b, w1, b1, w2, b2)
