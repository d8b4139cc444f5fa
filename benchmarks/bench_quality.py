"""Speed versus quality on trained digits models (the analogue of the paper's speed/quality
figure): the digits judge's accuracy and Frechet distance (marengine.evaluation.digits)
against seconds per image, across num_iter and diffusion steps.

Two models, trained once with the Trainer and cached (--cache-dir; reused while the recipe
stays the same): the 8x8 demo model (16 tokens) and a 16x16 one (digits upsampled, 64
tokens) for which the number of iterations matters. Each sampling *variant* is a name plus
SampleSettings fields (and, if needed, extra `MAR.sample_tokens` keyword arguments); the
sweep runs every variant at every point, so a new head sampler, step schedule or preset
is one more entry in VARIANTS, e.g.

    Variant("ddim", settings={"sampler": "ddim"})            # a SampleSettings field added later
    Variant("fast", settings={"preset": "fast"})
    Variant("cached", sample_kwargs={"cache": True})         # an extra sample_tokens argument

Seconds per image cover sampling and decoding `--images` images in batches; the samples
are then judged (10 classes, equal counts). --quick trains each model a few steps only:
its quality numbers are meaningless and labelled so.

    python benchmarks/bench_quality.py --quick --out quality.json
    python benchmarks/bench_quality.py --models digits16 --images 200
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.models import set_diffusion_steps, trained_digits  # noqa: E402
from marengine.bench.script import (  # noqa: E402
    Table,
    add_cache_dir_arg,
    add_common_args,
    add_count_arg,
    add_models_arg,
    run_main,
    select_models,
)
from marengine.config import SAMPLING_PRESETS  # noqa: E402
from marengine.evaluation.digits import evaluate  # noqa: E402
from marengine.models.tokenizers import to_uint8  # noqa: E402
from marengine.sampling.engine import SampleSettings, generate  # noqa: E402


@dataclass
class Variant:
    """One way of sampling: SampleSettings fields (num_iter is set by the sweep) and extra
    keyword arguments of MAR.sample_tokens (none: the engine's `generate` is used as is)."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    sample_kwargs: dict[str, Any] = field(default_factory=dict)
    axes: tuple[str, ...] = ("num_iter", "steps")  # the sweeps it runs along


FAST = SAMPLING_PRESETS["fast"]
# the engine as users run it (`generate` with the SampleSettings defaults: the official sampler, head
# backend "auto", pixel tokens' x_0 predictions clipped to [-1, 1]), then each fast-sampling knob
# alone along the axis it acts on, and the `fast` preset (benchmarks/bench_presets.py times them
# side by side at one point)
VARIANTS = [
    Variant("engine"),
    Variant("dpm++2m", settings={"sampler": "dpm++2m"}, axes=("steps",)),
    Variant(f"steps {FAST.steps}", settings={"steps": FAST.steps}, axes=("num_iter",)),
    Variant("cache", settings={"cache": FAST.cache}, axes=("num_iter",)),
    Variant("fast", settings={"preset": "fast"}, axes=("num_iter",)),
]


@dataclass
class Sweep:
    model: str
    num_iter: tuple[int, ...]  # at `steps` diffusion steps
    steps: tuple[int, ...]  # at `base_iter` iterations
    base_iter: int
    base_steps: int = 50
    cfg: float = 2.0
    images: int = 200


def sweeps(mode: str) -> list[Sweep]:
    if mode == "quick":
        return [Sweep("digits8", num_iter=(1, 4), steps=(5,), base_iter=4, base_steps=5, images=20)]
    return [
        Sweep("digits8", num_iter=(1, 4, 16), steps=(10, 25, 100), base_iter=16, images=100),
        Sweep("digits16", num_iter=(4, 16, 64), steps=(10, 25), base_iter=16, images=100),
    ]


def points(s: Sweep) -> list[tuple[str, int, int]]:
    """(axis, num_iter, steps), the base point once."""
    pts = [("num_iter", n, s.base_steps) for n in s.num_iter]
    pts += [("steps", s.base_iter, k) for k in s.steps if (s.base_iter, k) not in {(n, st) for _, n, st in pts}]
    return pts


def sample_images(
    model, tokenizer, labels: np.ndarray, settings: SampleSettings, sample_kwargs: dict[str, Any]
) -> np.ndarray:
    """uint8 images [N, H, W, C]: the engine's `generate`, or sample_tokens with extra arguments."""
    if not sample_kwargs:
        return generate(model, tokenizer, labels, settings)
    device = model.fake_latent.device
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    out = []
    for i in range(0, len(labels), settings.batch_size):
        y = torch.as_tensor(labels[i : i + settings.batch_size], device=device)
        kw = {"backend": settings.backend, "clip_denoised": bool(settings.clip_denoised), **sample_kwargs}
        lat = model.sample_tokens(
            len(y), settings.num_iter, settings.cfg, settings.cfg_schedule, y, settings.temperature, generator=gen, **kw
        )
        out.append(to_uint8(tokenizer.decode(lat.float())).cpu().numpy())
    return np.concatenate(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_models_arg(p, "digits8, digits16")
    add_count_arg(p, "--images", None, "images per point (default: the sweep's)")
    p.add_argument("--batch-size", type=int, default=100, help="images per sampling batch")
    add_cache_dir_arg(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main("quality", parse_args(argv), body)


def body(ctx, args: argparse.Namespace) -> None:
    for s in select_models(sweeps(ctx.mode), args.models, "bench_quality", ctx.mode):
        run_sweep(ctx, s, args)


def run_sweep(ctx, s: Sweep, args) -> None:
    model, tokenizer, info = trained_digits(s.model, ctx.mode, args.cache_dir)
    model, tokenizer = model.to(ctx.device), tokenizer.to(ctx.device)
    trained_now = info["trained_now"]
    quick_note = "quick: a model trained a few steps; its quality numbers mean nothing" if ctx.mode == "quick" else ""
    train_params = {k: info[k] for k in ("model", "preset", "data", "train_steps", "batch_size")}
    ctx.record(
        f"{s.model}/train",
        {**train_params, "recipe": info["recipe"], "cache": info["folder"]},
        {"train_seconds": info["train_seconds"], "final_loss": info["final_loss"], "trained_in_this_run": trained_now},
        {"train_seconds": "s"},
        quick_note,
    )
    n = args.images or s.images
    labels = np.repeat(np.arange(10), -(-n // 10))[:n]
    title = f"quality {s.model} ({n} images; trained {info['train_steps']} steps in {info['train_seconds']:.0f} s"
    title += f"{', now' if trained_now else ', cached'}; {ctx.threads} threads)"
    table = Table(
        ["variant", ("sweep", "axis", "", 8), "num_iter", "steps", "s_per_image", "accuracy", "fd_samples"]
        + ["fd_real_floor"],
        title + (f"\n  {quick_note}" if quick_note else ""),
    )
    for variant in VARIANTS:
        for axis, num_iter, steps in points(s):
            if num_iter > model.seq_len or axis not in variant.axes:
                continue
            set_diffusion_steps(model, steps)
            fields = {"num_iter": num_iter, "cfg": s.cfg, "temperature": 1.0, "batch_size": args.batch_size}
            settings = SampleSettings(**{**fields, **variant.settings})
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            images = sample_images(model, tokenizer, labels, settings, variant.sample_kwargs)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            with warnings.catch_warnings():  # few samples make the covariances singular: the floor shares that bias
                warnings.filterwarnings("ignore", message="Matrix is singular")
                report = evaluate(images, labels)
            metrics = {
                "s_per_image": seconds / n,
                "images_per_s": n / seconds,
                "accuracy": report.accuracy,
                "fd_samples": report.fd_samples,
                "fd_real_floor": report.fd_real,
                "classifier_accuracy": report.classifier_accuracy,
            }
            params = {
                "model": s.model,
                "weights": f"trained ({info['train_steps']} steps, {info['mode']} recipe)",
                "seq_len": model.seq_len,
                "variant": variant.name,
                "settings": dataclasses.asdict(settings),
                "sample_kwargs": variant.sample_kwargs,
                "num_iter": num_iter,
                "diffusion_steps": steps,
                "sweep": axis,
                "images": n,
                "threads": ctx.threads,
            }
            ctx.record(
                f"{s.model}/{variant.name}/it{num_iter}/s{steps}",
                params,
                metrics,
                {"s_per_image": "s", "images_per_s": "1/s", "fd_samples": "FD", "fd_real_floor": "FD"},
                quick_note,
            )
            table.add({"variant": variant.name, "axis": axis, "num_iter": num_iter, "steps": steps, **metrics})


if __name__ == "__main__":
    sys.exit(main())
