"""The command-line options of sampling, shared by `marengine sample`, `marengine demo` and
the torch-free deploy sampler (so this module imports neither torch nor numpy).

Every number is parsed with the checks of `marengine.checks`, so a bad value is an
argparse error naming the option before any work starts.
"""

from __future__ import annotations

import argparse
from typing import Any

from .checks import CFG_BOUNDS, TEMPERATURE_BOUNDS, arg, check_float, check_int
from .config import (
    GENERATION_ORDERS,
    SAMPLE_DEFAULTS,
    SAMPLING_PRECISIONS,
    SAMPLING_PRESETS,
    SamplingPreset,
    resolve_preset,
)
from .limits import MAX_CFG, MAX_TEMPERATURE
from .schedules import CFG_SCHEDULES


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad argument reported as one line (no usage block) naming the option."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_sampling_options(
    p: argparse.ArgumentParser,
    defaults: dict[str, Any] | None = None,
    seed_flag: str = "--seed",
    batch_flag: str = "--sample-batch-size",
) -> None:
    """--num-iter, --cfg, --cfg-schedule, --temperature, the seed and the batch size."""
    d = defaults or {}
    p.add_argument(
        "--num-iter",
        type=arg(check_int, "--num-iter", lo=1),
        default=d.get("num_iter", SAMPLE_DEFAULTS.num_iter),
        help="autoregressive iterations (at most the tokens of an image)",
    )
    p.add_argument(
        "--cfg",
        type=arg(check_float, "--cfg", **CFG_BOUNDS),
        default=d.get("cfg", SAMPLE_DEFAULTS.cfg),
        help=f"classifier-free guidance scale in [1, {MAX_CFG:g}] (1: none; default %(default)s)",
    )
    schedule = "guidance over the iterations: linear (1 up to --cfg as tokens are revealed) or constant"
    p.add_argument("--cfg-schedule", choices=CFG_SCHEDULES, default=SAMPLE_DEFAULTS.cfg_schedule, help=schedule)
    p.add_argument(
        "--temperature",
        type=arg(check_float, "--temperature", **TEMPERATURE_BOUNDS),
        default=d.get("temperature", SAMPLE_DEFAULTS.temperature),
        help=f"sampling temperature in [0, {MAX_TEMPERATURE:g}] (default %(default)s)",
    )
    p.add_argument(
        seed_flag,
        dest="sample_seed",
        type=arg(check_int, seed_flag, lo=0, hi=2**63 - 1),
        default=0,
        help="sampling seed",
    )
    p.add_argument(
        batch_flag,
        dest="sample_batch_size",
        type=arg(check_int, batch_flag, lo=1),
        default=d.get("batch_size", 64),
        help="images per sampling batch",
    )


def add_speed_options(p: argparse.ArgumentParser, cache: bool = True, precision_flag: str = "--precision") -> None:
    """--preset and the knobs it sets: --sampler, --steps (and --cache, --order and the matmul
    precision, named `precision_flag`: train has a --precision of its own), --clip-denoised."""
    names = ", ".join(f"{k} ({v.note})" for k, v in SAMPLING_PRESETS.items())
    p.add_argument("--preset", choices=tuple(SAMPLING_PRESETS), default="official", help=f"sampling preset: {names}")
    p.add_argument("--sampler", default=None, help="head sampler: ddpm, ddim, ddim:ETA or dpm++2m (default: preset's)")
    p.add_argument(
        "--steps", default=None, help="head diffusion steps per iteration: N, or A-B annealed (default: preset's)"
    )
    if cache:
        p.add_argument(
            "--cache", default=None, help="backbone reuse: off, or refresh=N,warmup=N,tokens=0|1,cfg=0|1 (preset's)"
        )
        p.add_argument(
            "--order",
            choices=GENERATION_ORDERS,
            default=None,
            help="generation order of the masked loop: random (official), halton (low-discrepancy) or "
            "lattice (a spread quarter first, then the rest) (default: preset's)",
        )
        p.add_argument(
            "--token-steps",
            default=None,
            help="per-token head steps: off, or hf:boost=N[,base=N][,frac=F][,early=K] (more steps for the tokens "
            "whose known neighbours vary most) (default: preset's)",
        )
        p.add_argument(
            precision_flag,
            dest="sample_precision",
            choices=SAMPLING_PRECISIONS,
            default=None,
            help="matmul precision: fp32, bf16, or auto (bf16 where the CPU/GPU has bf16 units) (default: preset's)",
        )
    p.add_argument(
        "--clip-denoised",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clamp x_0 predictions to [-1, 1] (default: on for pixel tokens, off for VAE latents)",
    )


def resolve_speed(args: argparse.Namespace) -> SamplingPreset:
    """The preset named on the command line with the explicitly given knobs applied."""
    return resolve_preset(
        args.preset,
        args.sampler,
        args.steps,
        getattr(args, "cache", None),
        getattr(args, "order", None),
        getattr(args, "sample_precision", None),
        getattr(args, "token_steps", None),
    )
