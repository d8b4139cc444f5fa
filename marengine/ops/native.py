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
- `LIMITS`: what the compiled kernels take (csrc/kernel_limits.h, reported by `_C.limits()`);
  `cuda_unsupported(...)` applies the CUDA kernels' limits to a head's sizes.
- `push_knobs()`: hand the kernel knobs of marengine/settings.py to the extension (it never
  reads the environment itself); done at import and again whenever the settings change.
- Fake (meta) kernels for both ops, so torch.compile and export can trace through them.

The extension is loaded tolerantly: if it is missing, this says so once (logging) and
`available()` is False; nothing raises at import.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..diffusion.embedding import timestep_frequencies
from ..diffusion.schedule import DiffusionTables
from ..settings import Settings, settings
from .head_job import HeadJob

log = logging.getLogger("marengine.ops")

try:
    from .. import _C  # noqa: F401  (registers torch.ops.marengine.*)

    _LOAD_ERROR: Exception | None = None
except (ImportError, OSError) as exc:  # not built, or built against another torch
    _C = None
    _LOAD_ERROR = exc
    log.info(
        "marengine._C is not available (%s); the native head sampler is disabled, "
        "the PyTorch reference is used. Build it with `pip install --no-build-isolation -e .`",
        exc,
    )

_PUSHED: Settings | None = None  # the settings whose knobs the extension holds (set_knobs)


def push_knobs() -> None:
    """Hand the kernel knobs of `settings()` to the extension when they changed since the last
    push (a bad value raises settings' ValueError here, at the first use of a kernel)."""
    global _PUSHED
    current = settings()
    if _C is not None and current is not _PUSHED:
        _C.set_knobs(current.native_knobs())
        _PUSHED = current


if _C is not None:
    try:  # before anything asks the extension which CPU kernels run (chosen once per process)
        push_knobs()
    except ValueError as exc:  # nothing raises at import: the first kernel call raises it
        log.info("marengine: %s", exc)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LIMITS: dict = _C.limits() if _C is not None else {}
WEIGHT_DTYPES = tuple(_DTYPES[name] for name in LIMITS.get("weight_dtypes", ()))  # () when not built


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


# ---------------------------------------------------------------------------- weights
@dataclass
class HeadWeights:
    """The head's GEMM weights in one dtype, in the order head_sample takes them."""

    in_w: torch.Tensor
    in_b: torch.Tensor
    ln_w: list[torch.Tensor]
    ln_b: list[torch.Tensor]
    mod_w: list[torch.Tensor]
    mod_b: list[torch.Tensor]
    w1: list[torch.Tensor]
    b1: list[torch.Tensor]
    w2: list[torch.Tensor]
    b2: list[torch.Tensor]
    fmod_w: torch.Tensor
    fmod_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [t for a in self.args() for t in (a if isinstance(a, list) else [a])]

    def args(self) -> tuple:
        return (
            self.in_w,
            self.in_b,
            self.ln_w,
            self.ln_b,
            self.mod_w,
            self.mod_b,
            self.w1,
            self.b1,
            self.w2,
            self.b2,
            self.fmod_w,
            self.fmod_b,
            self.out_w,
            self.out_b,
        )


# net -> {(dtype, device): (identity, content, HeadWeights)}; entries die with the module.
_WEIGHT_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()
_SCOPE = threading.local()  # .frozen: the innermost weights_frozen() block's _Frozen, or None


class _Frozen:
    """What one weights_frozen() block has checked and may reuse, per net (entries die with it)."""

    def __init__(self) -> None:
        # net -> the (dtype, device) cache entries checked in this block (its bytes were fingerprinted)
        self.checked: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()
        # net -> {device: (tables, t_emb [S, W])}
        self.t_emb: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _identity(net: nn.Module) -> tuple:
    """Changes when a parameter is replaced or updated through autograd-visible ops
    (optimizer steps, copy_ under no_grad); not when written through `.data` or numpy.
    (`Tensor._version`, the autograd version counter, has no public equivalent.)"""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in net.parameters())


def content_fingerprint(tensors: list[torch.Tensor]) -> int:
    """A 64-bit fingerprint of the tensors' bytes (csrc/cpu/content_hash.cpp on CPU; the same
    position-keyed sum in integer torch ops elsewhere). Catches every write, also those that
    bypass version counters."""
    if _C is not None and all(t.device.type == "cpu" for t in tensors):
        return int(_C.content_hash([t.detach() for t in tensors]))
    h = 0
    for i, t in enumerate(tensors):
        words = t.detach().contiguous().reshape(-1).view(torch.uint8)
        words = torch.nn.functional.pad(words, (0, (-words.numel()) % 4)).view(torch.int32).to(torch.int64)
        keys = torch.arange(words.numel(), device=words.device, dtype=torch.int64) * 2 + 1  # odd: invertible
        h = hash((h, i, int((words * keys).sum()), int(words.sum())))
    return h


@contextlib.contextmanager
def weights_frozen():
    """Within this block the head weights are taken not to change: their bytes are
    fingerprinted once per net (the first sampling call), not on every call; later calls
    reuse the checked weight entry and the time embedding (per tables) without walking the
    parameters again. The MAR loop runs inside one, so one generation pays one pass over the
    head weights."""
    outer = getattr(_SCOPE, "frozen", None)
    _SCOPE.frozen = _Frozen() if outer is None else outer
    try:
        yield
    finally:
        _SCOPE.frozen = outer


def _convert(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous `dtype` copy, or the tensor itself when it already is one."""
    return t.detach().to(dtype).contiguous()


def collect_weights(net: nn.Module, dtype: torch.dtype, device: torch.device) -> HeadWeights:
    """The head's weights as `dtype` on `device`; converted copies are cached per (net, dtype, device).

    A cached entry is served only while the parameters are the same tensors, at the same
    version, with the same bytes (the byte fingerprint is skipped for a net already checked
    inside `weights_frozen()`): stale packed weights are never used."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype must be one of {WEIGHT_DTYPES}, got {dtype}")
    per_net = _WEIGHT_CACHE.setdefault(net, {})
    hit = per_net.get((dtype, device))
    frozen: _Frozen | None = getattr(_SCOPE, "frozen", None)
    checked = frozen.checked.setdefault(net, set()) if frozen is not None else None
    if checked is not None and hit is not None and (dtype, device) in checked:
        return hit[2]  # checked earlier in this block, and the weights are taken not to change
    ident = _identity(net)
    trusted = bool(checked)  # the bytes were fingerprinted earlier in this block (for another entry)
    content = None if trusted and hit is not None and hit[0] == ident else content_fingerprint(list(net.parameters()))
    if checked is not None:
        checked.add((dtype, device))
    if hit is not None and hit[0] == ident and (content is None or hit[1] == content):
        return hit[2]
    if hit is not None and _C is not None:
        _C.forget_packed([t for t in hit[2].tensors() if t.device.type == "cpu"])
    # Normal tensors even under inference_mode: they carry a version counter, which lets
    # the kernel keep their packed form between calls.
    with torch.inference_mode(False), torch.no_grad():
        w = _gather(net, dtype, device)
    per_net[(dtype, device)] = (ident, content, w)
    return w


def _gather(net: nn.Module, dtype: torch.dtype, device: torch.device) -> HeadWeights:
    cv = lambda t: _convert(t.to(device), dtype)  # noqa: E731
    lin = lambda m: (cv(m.weight), cv(m.bias))  # noqa: E731
    blocks = list(net.res_blocks)
    pairs = (
        [lin(b.adaLN_modulation[-1]) for b in blocks],
        [lin(b.mlp[0]) for b in blocks],
        [lin(b.mlp[2]) for b in blocks],
    )
    in_w, in_b = lin(net.input_proj)
    fmod_w, fmod_b = lin(net.final_layer.adaLN_modulation[-1])
    out_w, out_b = lin(net.final_layer.linear)
    ln_f32 = lambda t: t.detach().to(device=device, dtype=torch.float32).contiguous()  # noqa: E731
    return HeadWeights(
        in_w=in_w,
        in_b=in_b,
        ln_w=[ln_f32(b.in_ln.weight) for b in blocks],
        ln_b=[ln_f32(b.in_ln.bias) for b in blocks],
        mod_w=[p[0] for p in pairs[0]],
        mod_b=[p[1] for p in pairs[0]],
        w1=[p[0] for p in pairs[1]],
        b1=[p[1] for p in pairs[1]],
        w2=[p[0] for p in pairs[2]],
        b2=[p[1] for p in pairs[2]],
        fmod_w=fmod_w,
        fmod_b=fmod_b,
        out_w=out_w,
        out_b=out_b,
    )


def pick_weight_dtype(net: nn.Module, device: torch.device, weight_dtype: torch.dtype | None) -> torch.dtype:
    """Explicit choice, else the autocast dtype when autocast is on for the device, else the net's dtype."""
    if weight_dtype is not None:
        return weight_dtype
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    dtype = net.input_proj.weight.dtype
    return dtype if dtype in WEIGHT_DTYPES else torch.float32


# ---------------------------------------------------------------------------- embeddings
def _linear32(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.float(), m.weight.float(), m.bias.float())


def embeddings(net: nn.Module, tables: DiffusionTables, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_emb = cond_embed(z) [R, W] and t_emb = time_embed(timestep_map) [S, W], fp32. Inside
    weights_frozen() t_emb, which depends on the weights and the tables only, is computed once
    per (net, tables, device)."""
    frozen: _Frozen | None = getattr(_SCOPE, "frozen", None)
    kept = frozen.t_emb.setdefault(net, {}) if frozen is not None else {}
    with torch.autocast(z.device.type, enabled=False):
        c_emb = _linear32(net.cond_embed, z)
        hit = kept.get(z.device)
        if hit is not None and hit[0] is tables:
            return c_emb.contiguous(), hit[1]
        tmap = tables.on(z.device)["timestep_map"]
        freqs = timestep_frequencies(tmap, net.time_embed.frequency_embedding_size)
        mlp = net.time_embed.mlp
        t_emb = _linear32(mlp[2], torch.nn.functional.silu(_linear32(mlp[0], freqs))).contiguous()
    kept[z.device] = (tables, t_emb)  # outside a block: a throwaway dict
    return c_emb.contiguous(), t_emb


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
    _WEIGHT_CACHE.clear()
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
