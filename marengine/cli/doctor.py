"""`marengine doctor`: what the native head sampler was built with, what runs where, and its self-checks.

Prints the build (versions, CPU kernel ISA, whether the CUDA kernels are built and why not,
what the kernels take), the settings (every environment knob of marengine/settings.py, its
value and whether it came from the environment or is the default), the GPUs, which backend
a head of the given size gets on each device, and runs the self-checks (ops/selfcheck.py) now:
the CPU kernels always (on a small head: their code does not depend on the size), the CUDA
kernels where a GPU is visible (every weight dtype on every path, and each sampler, on the
given head). Exit status 0 only when every check ran and
passed: 1 when one fails, when one could not run, or when none could (no kernels built). A few
seconds on a CPU; well under a second of GPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import TYPE_CHECKING

from ..checks import check_int
from ..limits import MAX_CHECK_CHANNELS, MAX_CHECK_DEPTH, MAX_CHECK_WIDTH
from ..settings import Settings, settings, use

if TYPE_CHECKING:
    from ..ops.selfcheck import Verdict
from .common import add_checked, add_command, add_threads_option


def _head_template(width: int, depth: int, channels: int):
    """A head of the official structure on the meta device (shapes only: the checks draw weights)."""
    import torch

    from ..models.head import SimpleMLPAdaLN

    with torch.device("meta"):
        return SimpleMLPAdaLN(channels, width, 2 * channels, 768, depth)


def _configs(device: str, width: int, depth: int, channels: int, full: bool):
    import torch

    from ..ops.selfcheck import Config

    def cfg(path, dtype, sampler="ddpm", clip=False, guided=True):
        return Config(device, path, dtype, width, depth, channels, sampler, clip, guided)

    if device == "cpu":
        out = [cfg("cpu", torch.float32), cfg("cpu", torch.bfloat16), cfg("cpu", torch.float32, "dpm++2m", True)]
        return out + ([cfg("cpu", torch.float16), cfg("cpu", torch.float32, "ddim:1", guided=False)] if full else [])
    out = [
        cfg(path, dtype)
        for path in ("persistent", "kernels-32", "kernels-64")
        for dtype in (torch.float32, torch.bfloat16, torch.float16)
    ]
    samplers = [("ddim", False), ("ddim:1", False), ("dpm++2m", True)]
    out += [cfg("persistent", torch.bfloat16, s, clip) for s, clip in samplers]
    out += [cfg("kernels-64", torch.bfloat16, s, clip, guided=False) for s, clip in samplers]
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    import torch

    from ..ops import buildinfo, selfcheck
    from ..ops.precision import resolve_precision

    t_start = time.perf_counter()
    info = buildinfo.build_info()
    print("marengine doctor")
    print("build")
    rows = [
        ("marengine", f"{info.marengine} (python {info.python})"),
        ("torch", f"{info.torch}, CUDA {info.torch_cuda or 'none (a CPU build)'}"),
        ("extension", info.extension or f"NOT BUILT ({info.load_error}): pip install --no-build-isolation -e ."),
        ("CPU kernels", info.cpu_kernels_line),
        ("CUDA kernels", info.cuda_kernels),
        ("stage tests", "available (torch.ops.marengine_stages)" if info.stage_ops else "not built"),
    ]
    rows += [("GPU", g) for g in info.gpus] or [("GPU", "none visible (torch.cuda.is_available() is False)")]
    rows += [("kernel limits", limits_line(info.limits))] if info.limits else []
    for name, value in rows:
        print(f"  {name:<26} {value}")
    print_settings(settings())
    print(f"backends for a {args.width}x{args.depth} head (backend='auto')")
    for dev, what in buildinfo.backend_lines(info, args.width, args.depth, args.channels):
        print(f"  {dev:<26} {what}")
    print("sampling precision (the presets' precision='auto', ops/precision.py)")
    for dev in ("cpu", "cuda"):
        if dev == "cpu" or info.gpus:
            bf16 = resolve_precision("auto", dev) == torch.bfloat16
            what = "bf16 (the device has bf16 units)" if bf16 else "fp32 (no bf16 units: bf16 would be emulated)"
            print(f"  {dev:<26} {what}")
    if args.no_checks:
        return 0

    plans = []
    if info.extension is not None:
        plans.append(("cpu", args.cpu_width, args.cpu_depth))
    if info.cuda_registered and info.gpus:
        plans.append((f"cuda:{torch.cuda.current_device()}", args.width, args.depth))
    elif args.require_cuda:
        print(f"  FAIL no CUDA self-check can run: GPU {'visible' if info.gpus else 'not visible'}, "
              f"CUDA kernels {info.cuda_kernels}")  # fmt: skip
        return 1
    print(f"self-checks (now; during sampling {selfcheck.ENV}={selfcheck.mode()})")
    if not plans:
        print("  none: no native kernels are built, so there is nothing to check")
        print("result: NO self-check ran (build the extension: pip install --no-build-isolation -e .)")
        return 1
    verdicts: list[Verdict] = []
    old = use(dataclasses.replace(settings(), head_path="auto"))  # each check takes the path it names
    try:
        for device, width, depth in plans:
            template = _head_template(width, depth, args.channels)
            for config in _configs(device, width, depth, args.channels, args.full):
                verdicts.append(selfcheck.run_check(template, config))
                print(f"  {verdicts[-1].line()}", flush=True)
    finally:
        use(old)
    verdict, status = summarize(verdicts)
    print(f"result: {verdict} ({time.perf_counter() - t_start:.1f} s)")
    if any(not v.ok for v in verdicts):
        print("  the failing configurations run on the PyTorch reference during sampling; please report this output")
    return status


def print_settings(s: Settings) -> None:
    """Every knob of marengine/settings.py: its variable, value and where the value came from."""
    print("settings (environment, read once)")
    for env, value, source in s.describe():
        print(f"  {env:<28} {value} ({source})")


def limits_line(limits: dict) -> str:
    """What the compiled kernels take (marengine._C.limits(), csrc/kernel_limits.h), in one line."""
    return (
        f"LayerNorm eps {limits['layernorm_eps']:g}; weights {', '.join(limits['weight_dtypes'])}; "
        f"CPU builds compiled in: {limits['cpu_kernels_built']}; CUDA kernels "
        f"({'built' if limits['cuda_built'] else 'not built'}) take widths that are multiples of "
        f"{limits['cuda_width_multiple']}, <= {limits['cuda_max_channels']} token channels, "
        f"<= {limits['cuda_max_depth']} res blocks"
    )


def summarize(verdicts: list[Verdict]) -> tuple[str, int]:
    """The result line and the exit status: 0 only when every planned check ran and passed;
    a check whose harness could not run (SKIP) is not counted as passed."""
    ran = [v for v in verdicts if v.ran]
    failed = sum(not v.ok for v in ran)
    skipped = len(verdicts) - len(ran)
    if not ran:
        return f"NO self-check ran: all {skipped} could not run (see the SKIP lines)", 1
    text = f"{failed} of {len(ran)} self-checks FAILED" if failed else f"all {len(ran)} self-checks that ran passed"
    if skipped:
        return f"{text}; {skipped} of {len(verdicts)} could NOT run (see the SKIP lines)", 1
    if not failed:
        text = f"all {len(ran)} self-checks passed"
    return text, 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    hint = "the self-checks build this head with real weights; marengine.limits caps it"
    p = add_command(
        sub,
        "doctor",
        "build info, which head sampler runs where, and the native kernels' self-checks (exit 1 on fail)",
        cmd_doctor,
    )
    for flag, default, cap, text in (
        ("--width", 1024, MAX_CHECK_WIDTH, "head width of the CUDA checks (MAR-B: 1024)"),
        ("--depth", 6, MAX_CHECK_DEPTH, "head depth of the CUDA checks (MAR-B: 6)"),
        ("--channels", 16, MAX_CHECK_CHANNELS, "token channels"),
        ("--cpu-width", 256, MAX_CHECK_WIDTH, "head width of the CPU checks"),
        ("--cpu-depth", 2, MAX_CHECK_DEPTH, "head depth of the CPU checks"),
    ):
        add_checked(p, flag, check_int, default, f"{text}, at most {cap}", lo=1, hi=cap, hint=hint)
    p.add_argument("--full", action="store_true", help="more CPU configurations (fp16, DDIM without CFG)")
    p.add_argument("--no-checks", action="store_true", help="build info only")
    p.add_argument("--require-cuda", action="store_true", help="exit 1 when the CUDA kernels cannot be checked")
    add_threads_option(p)
