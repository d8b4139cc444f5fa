"""Safe by default: a native kernel configuration is checked against the reference before first use.

The first time a configuration of the native head sampler is about to run in a process, a
small problem of the same shape (random weights of the same width and depth, a few rows and
steps, the same weight dtype, code path, sampler and options) runs through the native
operator and through the PyTorch reference, and the two are compared with the tolerances the
tests use: fp32 within 1e-4 of max|ref|; bf16 / fp16 within twice PyTorch's own autocast error
(+1e-6 max|ref|). The verdict is cached for the process. A configuration that fails is named
in one warning and the dispatcher (ops/dispatch.py) runs the reference for it from then on
(with backend="native" it raises instead: that caller asked for the kernel).

A configuration (`Config`): device, path, weight dtype, head width and depth, token channels,
sampler, clip_denoised, and whether CFG is on. The path is what the kernels would take: on
CUDA "persistent" (<= 256 network rows), "kernels-32" (per-step kernels, 32x32 tiles, <= 512
rows) or "kernels-64", honouring MARENGINE_HEAD_PATH as csrc/cuda/ops_cuda.cpp does; on the
CPU "cpu".

Switch (marengine/settings.py, read once): MARENGINE_SELFCHECK=
    auto  (default)  check the CUDA kernels. Not the CPU kernels: CI tests those on every
                     change, and a CPU check of a MAR-B head costs ~1 s, a GPU one milliseconds.
    all              check the CPU kernels too
    off / 0          no checks: the native kernels run unchecked

`run_check(...)` runs one check now (marengine doctor); `results()` lists the verdicts so far.
While a check runs, TF32 matmuls are switched off (process-wide, restored after): its fp32
reference must be true fp32.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..diffusion.samplers import HeadSampler
from ..diffusion.schedule import DiffusionTables, make_tables
from ..settings import env_of, settings
from . import head_weights, native, reference
from .head_job import HeadJob

log = logging.getLogger("marengine.ops")

ENV = env_of("selfcheck")
FP32_TOL = 1e-4
LOWP_FACTOR, LOWP_FLOOR = 2.0, 1e-6
# network rows R and diffusion steps of the check problem per path: the persistent path's
# modulation chunk is ceil(256 / 74) = 4 steps, so 6 steps cross a chunk boundary; the
# per-step paths get rows in their own tile regime (partial tiles included)
PROBLEM = {"persistent": (74, 6), "kernels-32": (300, 4), "kernels-64": (522, 4), "cpu": (18, 4)}
CFG_SCALE, SEED = 3.0, 20240


def mode() -> str:
    """The switch: 'auto' (CUDA kernels checked), 'all' (CPU kernels too) or 'off'."""
    return settings().selfcheck


def enabled_for(device: torch.device) -> bool:
    m = mode()
    return m == "all" or (m == "auto" and device.type == "cuda")


def head_path(device: torch.device, rows: int) -> str:
    """The code path the native kernels take for `rows` network rows on `device` (the
    thresholds are the extension's: native.LIMITS)."""
    if device.type != "cuda":
        return device.type
    forced = settings().head_path
    if forced == "persistent" or (forced == "auto" and rows <= native.LIMITS["cuda_persistent_max_rows"]):
        return "persistent"
    return "kernels-32" if rows <= native.LIMITS["cuda_small_tile_max_rows"] else "kernels-64"


@dataclass(frozen=True)
class Config:
    """One native kernel configuration: what a verdict is cached for."""

    device: str
    path: str
    dtype: torch.dtype
    width: int
    depth: int
    channels: int
    sampler: str
    clip: bool
    guided: bool

    def describe(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        return (
            f"{self.device}, {self.path} path, {dt} weights, head {self.width}x{self.depth}, "
            f"{self.channels} channels, sampler {self.sampler}, cfg {'on' if self.guided else 'off'}, "
            f"clip_denoised {'on' if self.clip else 'off'}"
        )


@dataclass
class Verdict:
    config: Config
    ok: bool
    error: float  # max |native - ref32|
    allowed: float
    ms: float  # wall time of the whole check (twin, native, reference)
    detail: str = ""
    ran: bool = True  # False: the harness itself failed, the kernel was not checked (ok stays True)

    def summary(self) -> str:
        extra = f"; {self.detail}" if self.detail else ""
        return f"max error {self.error:.3g} (allowed {self.allowed:.3g}), {self.ms:.0f} ms{extra}"

    def line(self) -> str:
        if not self.ran:
            return f"SKIP {self.config.describe()}: {self.detail}"
        return f"{'ok  ' if self.ok else 'FAIL'} {self.config.describe()}: {self.summary()}"


_VERDICTS: dict[Config, Verdict] = {}
_LOCK = threading.Lock()


def clear() -> None:
    """Forget every verdict (tests; or after rebuilding the extension in-process)."""
    with _LOCK:
        _VERDICTS.clear()


def results() -> list[Verdict]:
    with _LOCK:
        return list(_VERDICTS.values())


def config_for(
    net: nn.Module, device: torch.device, rows: int, dtype: torch.dtype, sampler: HeadSampler, clip: bool, guided: bool
) -> Config:
    return Config(
        device=str(device),
        path=head_path(device, rows),
        dtype=dtype,
        width=int(net.model_channels),
        depth=int(net.num_res_blocks),
        channels=int(net.in_channels),
        sampler=sampler.key,
        clip=bool(clip),
        guided=bool(guided),
    )


def _cannot_check_now() -> bool:
    """Inside CUDA Graph capture, torch.compile or tracing a check cannot run (it syncs)."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
    if compiling() or torch.jit.is_tracing():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def failure(job: HeadJob, weight_dtype: torch.dtype | None = None) -> str | None:
    """None when the native kernels may run this job (checked, or checks are off for the
    device); else why not (the configuration failed its check: warned once)."""
    net, device = job.net, job.z.device
    if not enabled_for(device):
        return None
    dtype = native.pick_weight_dtype(net, device, weight_dtype)
    cfg_key = config_for(net, device, int(job.z.shape[0]), dtype, job.sampler, job.clip_denoised, job.guided)
    with _LOCK:
        v = _VERDICTS.get(cfg_key)
    if v is None:
        if _cannot_check_now():
            log.debug("self-check of %s deferred: graph capture or compilation in progress", cfg_key.describe())
            return None
        v = run_check(net, cfg_key)
        if not v.ok:
            warnings.warn(
                f"marengine: the native head kernel failed its self-check for [{cfg_key.describe()}]: {v.summary()}. "
                "The PyTorch reference runs this configuration from now on in this process (correct, slower). "
                "Please report it with the output of `marengine doctor`; "
                f"{ENV}=0 disables the self-checks.",
                RuntimeWarning,
                stacklevel=4,
            )
    if v.ok:
        return None
    return f"the native kernel failed its self-check for [{cfg_key.describe()}] ({v.detail or 'wrong result'})"


# ---------------------------------------------------------------------------- the check
def _random_twin(net: nn.Module, device: torch.device) -> nn.Module:
    """A copy of `net`'s module structure on `device` with fresh random fp32 weights (its own
    weights are never copied; a template on the meta device works too)."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    memo: dict[int, object] = {}
    for p in net.parameters():
        memo[id(p)] = nn.Parameter(torch.empty(p.shape, device=device), requires_grad=False)
    for b in net.buffers():
        memo[id(b)] = torch.zeros(b.shape, dtype=b.dtype, device=device) if b.is_meta else b.detach().to(device)
    twin = copy.deepcopy(net, memo).eval()
    with torch.no_grad():
        for name, p in twin.named_parameters():
            r = torch.randn(p.shape, generator=gen, device=device)
            if p.ndim == 2:
                p.copy_(r / math.sqrt(p.shape[1]))
            elif "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.05 * r)
            if name.startswith("final_layer.linear."):  # keeps the chain moderate: fp16 references stay finite
                p.mul_(1e-2)
    return twin


_TABLES: dict[int, DiffusionTables] = {}


def _tables(steps: int) -> DiffusionTables:
    if steps not in _TABLES:
        _TABLES[steps] = make_tables(str(steps))
    return _TABLES[steps]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_check(net: nn.Module, config: Config) -> Verdict:
    """Run the check of `config` now (with a random twin of `net`'s structure), cache and return it."""
    device = torch.device(config.device)
    sampler = HeadSampler.parse(config.sampler)
    rows, steps = PROBLEM.get(config.path, PROBLEM["cpu"])
    n = rows // 2 if config.guided else rows
    t0 = time.perf_counter()
    try:
        v = _compare(net, config, device, sampler, n, steps)
    except Exception as e:  # the harness itself failed: say so, do not condemn the kernel
        log.warning("marengine: the self-check of [%s] could not run (%s); the native kernel runs unchecked",
                    config.describe(), e)  # fmt: skip
        v = Verdict(config, True, float("nan"), float("nan"), 0.0, f"not checked: {e}", ran=False)
    v.ms = (time.perf_counter() - t0) * 1e3
    with _LOCK:
        _VERDICTS[config] = v
    log.debug("self-check: %s", v.line())
    return v


def _compare(net: nn.Module, config: Config, device: torch.device, sampler: HeadSampler, n: int, steps: int) -> Verdict:
    old_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
        twin = _random_twin(net, device)
        tables = _tables(steps)
        gen = torch.Generator(device=device).manual_seed(SEED + 1)
        z = torch.randn(2 * n if config.guided else n, twin.cond_embed.in_features, generator=gen, device=device)
        x_T = 0.1 * torch.randn(n, config.channels, generator=gen, device=device)
        temperature = 0.0 if sampler.deterministic else 1.0
        noise = torch.randn(steps, n, config.channels, generator=gen, device=device) if temperature else None
        cfg = CFG_SCALE if config.guided else 1.0
        job = HeadJob(twin, tables, z, x_T, temperature, cfg, noise, sampler, config.clip)
        try:
            out = native.sample_head(job, weight_dtype=config.dtype).double()
            _sync(device)
        except RuntimeError as e:  # a launch failure is a failed check
            return Verdict(config, False, float("inf"), 0.0, 0.0, f"the kernel raised: {' '.join(str(e).split())}")
        finally:
            head_weights.forget(twin)  # its converted and packed copies
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            ref = reference.sample_head(job).double()
            lowp = None
            if config.dtype != torch.float32:
                with torch.autocast(device.type, dtype=config.dtype):
                    lowp = reference.sample_head(job).double()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32
    scale = float(ref.abs().max())
    if lowp is None:
        allowed = FP32_TOL * scale
    else:
        allowed = LOWP_FACTOR * float((lowp - ref).abs().max()) + LOWP_FLOOR * scale
    err = float((out - ref).abs().max()) if bool(torch.isfinite(out).all()) else float("inf")
    detail = "" if err <= allowed else "non-finite output" if math.isinf(err) else "wrong result"
    return Verdict(config, err <= allowed, err, allowed, 0.0, detail)
