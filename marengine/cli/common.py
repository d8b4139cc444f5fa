"""What the sub-commands share: flags generated from a settings dataclass, the sampling
settings built from parsed options, and --threads."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from ..checks import arg, check_int


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object, or an error quoting what is wrong with it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"key\": 1}}', got {text!r}")
    return value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(p: argparse.ArgumentParser, cls: type, defaults: Any) -> None:
    """One flag per field of the dataclass `cls`, defaults from the instance `defaults` (the
    dataclass checks the values when it is built from them)."""
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, dict):
            p.add_argument(flag(f.name), type=json_object, default=default, help="JSON object")
        elif isinstance(default, tuple):
            p.add_argument(flag(f.name), type=float, nargs=len(default), default=default)
        elif default is None:
            p.add_argument(flag(f.name), type=float if "float" in str(f.type) else str, default=None)
        else:
            p.add_argument(flag(f.name), type=type(default), default=default)


def dataclass_from(cls: type, args: argparse.Namespace) -> Any:
    return cls.from_dict({f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_overwrite_option(p: argparse.ArgumentParser) -> None:
    """--overwrite: the one switch that lets a command replace its own earlier output."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output marengine wrote at the output path (default: refuse); "
        "files marengine did not write are never touched",
    )


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The model to load (any checkpoint kind, models.loading.load_model) and where to run it."""
    p.add_argument("--checkpoint", required=required, help="training .pth, pretrained folder, or official .pth")
    p.add_argument("--model", default=None, help="preset for official checkpoints (mar_base, mar_large, mar_huge)")
    p.add_argument("--vae-ckpt", default=None, help="the KL-16 VAE file, for official checkpoints")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_backend_options(p: argparse.ArgumentParser, precision_flag: str = "--precision") -> None:
    """--backend, and the sampling preset with its knobs (options.add_speed_options)."""
    from ..config import HEAD_BACKENDS as BACKENDS
    from ..options import add_speed_options

    p.add_argument("--backend", choices=BACKENDS, default="auto", help="head sampler: native kernels or torch")
    add_speed_options(p, precision_flag=precision_flag)


def sample_settings(args: argparse.Namespace):
    from ..sampling.engine import SampleSettings

    return SampleSettings(
        num_iter=args.num_iter,
        cfg=args.cfg,
        cfg_schedule=args.cfg_schedule,
        temperature=args.temperature,
        seed=args.sample_seed,
        batch_size=args.sample_batch_size,
        backend=args.backend,
        clip_denoised=args.clip_denoised,
        preset=args.preset,
        sampler=args.sampler,
        steps=args.steps,
        cache=args.cache,
        order=args.order,
        precision=args.sample_precision,
    )


def add_threads_option(p: argparse.ArgumentParser, default: str = "") -> None:
    """--threads N for a command that computes: the torch CPU threads it uses (apply_threads);
    `default` says what happens without it when that is not torch's own choice."""
    default = default or f"torch's own choice, one per core ({os.cpu_count() or 1} here)"
    p.add_argument(
        "--threads",
        type=arg(check_int, "--threads", lo=1),
        default=None,
        help=f"torch CPU threads (intra-op, and inter-op where it can still be set); default: {default}. "
        "On a machine that other jobs share, give the cores that are free (e.g. --threads 1 when another "
        "job holds one of two cores): more threads than free cores run several times slower",
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from --threads before the command does any work (no-op without it)."""
    n = getattr(args, "threads", None)
    if n is None:
        return
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable before the first inter-op parallel work of the process
        pass
