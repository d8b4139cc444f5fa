"""What the sub-commands share: flags generated from a settings dataclass and the sampling
settings built from parsed options."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any


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


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The model to load (any checkpoint kind, models.loading.load_model) and where to run it."""
    p.add_argument("--checkpoint", required=required, help="training .pth, pretrained folder, or official .pth")
    p.add_argument("--model", default=None, help="preset for official checkpoints (mar_base, mar_large, mar_huge)")
    p.add_argument("--vae-ckpt", default=None, help="the KL-16 VAE file, for official checkpoints")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """--backend, and the sampling preset with its knobs (options.add_speed_options)."""
    from ..config import HEAD_BACKENDS as BACKENDS
    from ..options import add_speed_options

    p.add_argument("--backend", choices=BACKENDS, default="auto", help="head sampler: native kernels or torch")
    add_speed_options(p)


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
    )
