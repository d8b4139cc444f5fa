"""What the sub-commands share: the parser of a command (whose help shows every default), the
model-loading options and the pipeline they load, the output options (--out, --overwrite,
--threads), checked numeric flags, flags generated from a settings dataclass, and the sampling
settings built from parsed options."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..checks import arg, check_int

if TYPE_CHECKING:
    from ..pipeline import MARPipeline
    from ..sampling.engine import SampleSettings


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with every option's default appended where its help does not already
    say it (an option without a default, or an off switch, shows none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        none = not action.option_strings or default is None or default is argparse.SUPPRESS
        off_switch = default is False and action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if none or off_switch or "%(default)" in text or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, fn: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """The parser of the sub-command `name` that runs `fn(args)`; its --help shows every default."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    p.set_defaults(fn=fn)
    return p


def add_generator_command(
    sub: argparse._SubParsersAction, name: str, help: str, fn: Callable[[argparse.Namespace], int], out_help: str
) -> argparse.ArgumentParser:
    """A command that generates with a model into an output folder (sample, edit): the model and its
    sampling settings (add_pipeline_options) and the output options (add_output_options)."""
    p = add_command(sub, name, help, fn)
    add_pipeline_options(p)
    add_output_options(p, out_help)
    return p


def add_checked(
    p: argparse.ArgumentParser, flag: str, check: Callable[..., Any], default: Any, help: str, **bounds: Any
) -> None:
    """A numeric flag parsed by `check` (checks.check_int / check_float) within `bounds`: a bad
    value is an argparse error naming the flag."""
    p.add_argument(flag, type=arg(check, flag, **bounds), default=default, help=help)


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object, or an error quoting what is wrong with it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"key\": 1}}', got {text!r}")
    return value


def add_switch(p: argparse.ArgumentParser, flag: str, default: bool, help: str) -> None:
    """An on/off flag with its --no- form (--progress / --no-progress)."""
    p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(p: argparse.ArgumentParser, cls: type, defaults: Any, helps: Mapping[str, str]) -> None:
    """One flag per field of the dataclass `cls`, defaults from the instance `defaults`, help
    from `helps[field]` (the dataclass checks the values when it is built from them)."""
    for f in dataclasses.fields(cls):
        default, text = getattr(defaults, f.name), helps.get(f.name, "")
        if isinstance(default, bool):
            add_switch(p, flag(f.name), default, text)
        elif isinstance(default, dict):
            p.add_argument(flag(f.name), type=json_object, default=default, help=f"{text} (a JSON object)")
        elif isinstance(default, tuple):
            p.add_argument(flag(f.name), type=float, nargs=len(default), default=default, help=text)
        elif default is None:
            p.add_argument(flag(f.name), type=float if "float" in str(f.type) else str, default=None, help=text)
        else:
            p.add_argument(flag(f.name), type=type(default), default=default, help=text)


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


def add_output_options(
    p: argparse.ArgumentParser,
    out_help: str,
    *,
    required: bool = True,
    default: str | None = None,
    overwrite: bool = True,
    threads_default: str = "",
) -> None:
    """What a command that writes has: --out (`out_help` says what is written there), --overwrite
    (where it may replace its own earlier output) and --threads."""
    p.add_argument("--out", required=required, default=default, help=out_help)
    if overwrite:
        add_overwrite_option(p)
    add_threads_option(p, threads_default)


def add_pipeline_options(p: argparse.ArgumentParser, required: bool = True, **flags: str) -> None:
    """What load_pipeline and sample_settings read: the model (add_model_options) and its sampling
    settings (add_settings_options; `flags` rename the seed or batch flag)."""
    add_model_options(p, required)
    add_settings_options(p, **flags)


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The model to load (any checkpoint kind, models.loading.load_model) and where to run it."""
    p.add_argument("--checkpoint", required=required, help="training .pth, pretrained folder, or official .pth")
    p.add_argument(
        "--model", default=None, help="preset for official checkpoints (mar_base, mar_large, mar_huge) (default: none)"
    )
    p.add_argument("--vae-ckpt", default=None, help="the KL-16 VAE file, for official checkpoints (default: none)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto (a GPU when torch sees one), cpu, cuda or cuda:N")


def load_pipeline(args: argparse.Namespace, settings: SampleSettings | None = None, device: Any = None) -> MARPipeline:
    """The MARPipeline of the options of add_model_options: the one way the commands load a model
    (device: where to run it, default --device)."""
    from ..pipeline import MARPipeline

    return MARPipeline.from_pretrained(
        args.checkpoint,
        device=args.device if device is None else device,
        config=args.model,
        vae_ckpt=args.vae_ckpt,
        use_ema=not args.no_ema,
        settings=settings,
    )


def add_settings_options(
    p: argparse.ArgumentParser,
    defaults: dict[str, Any] | None = None,
    precision_flag: str = "--precision",
    **flags: str,
) -> None:
    """Every flag of SampleSettings (what sample_settings reads): the loop's (options.add_sampling_options,
    `defaults` and `flags` go there), --backend, and the sampling preset with its knobs
    (options.add_speed_options; the matmul precision named `precision_flag`)."""
    from ..config import HEAD_BACKENDS as BACKENDS
    from ..options import add_sampling_options, add_speed_options

    add_sampling_options(p, defaults, **flags)
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="head sampler: native kernels or torch")
    add_speed_options(p, precision_flag=precision_flag)


def sample_settings(args: argparse.Namespace) -> SampleSettings:
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
        token_steps=args.token_steps,
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
