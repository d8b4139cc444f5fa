"""What a benchmark runs: sampling points (batch, iterations, diffusion steps, CFG), the
one-at-a-time sweeps around a base point, per-model plans, and the models they run on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .models import random_model, random_vae_tokenizer, trained_digits
from .variants import BACKENDS, Setup

REAL_NAMES = {"mar_base": "MAR-B", "mar_large": "MAR-L", "mar_huge": "MAR-H"}
CPU_REDUCED = (
    "reduced configuration for a CPU: the released {name} widths, depths, heads and buffer, but 64 px "
    "latent grids of 4x4 = 16 tokens (released: 256), batch 1, 4 iterations and 10 diffusion steps "
    "(released defaults: 64 and 100); the real configuration takes minutes per image on two cores"
)


@dataclass(frozen=True)
class Point:
    batch: int
    num_iter: int
    steps: int  # diffusion steps of the head
    cfg: float  # 1.0: no guidance
    sweep: str = "base"  # the axis along which this point differs from the base point

    @property
    def label(self) -> str:
        return f"b{self.batch}/it{self.num_iter}/s{self.steps}/{'cfg' if self.cfg != 1.0 else 'nocfg'}"


def sweep(
    base: Point,
    batch: tuple[int, ...] = (),
    num_iter: tuple[int, ...] = (),
    steps: tuple[int, ...] = (),
    cfg_off: bool = True,
) -> list[Point]:
    """The base point and one-at-a-time variations of it (vLLM-style sweeps, not a grid)."""
    pts = [base]
    pts += [replace(base, batch=b, sweep="batch") for b in batch]
    pts += [replace(base, num_iter=n, sweep="num_iter") for n in num_iter]
    pts += [replace(base, steps=s, sweep="steps") for s in steps]
    if cfg_off:
        pts.append(replace(base, cfg=1.0, sweep="cfg"))
    return pts


@dataclass
class ModelPlan:
    model: str  # digits8 | digits16 (trained) or a preset name (random weights)
    points: list[Point]
    backends: tuple[str, ...] = BACKENDS
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to the preset (reduced configuration)
    note: str = ""  # what was reduced or left out, and why
    warmup: int = 1
    repeats: int = 5


def build_setup(plan: ModelPlan, mode: str, device: torch.device, cache_dir: Path, precision: str) -> Setup:
    """The plan's model on `device`: a trained digits model (trained or loaded from the cache)
    or a preset shape with random weights and the KL-16 VAE decoder (random weights too)."""
    if plan.model.startswith("digits"):
        model, tokenizer, info = trained_digits(plan.model, mode, cache_dir)
        info = {"weights": f"trained ({info['train_steps']} steps, {info['mode']} recipe)", **info}
        info["onnx_dir"] = str(Path(info["folder"]) / "onnx")
        return Setup(model.to(device), tokenizer.to(device), device, precision, info=info)
    model = random_model(plan.model, device, **plan.overrides)
    key = hashlib.sha1(json.dumps(plan.overrides, sort_keys=True).encode()).hexdigest()[:8]
    info = {"weights": "random N(0, 0.02)", "onnx_dir": str(Path(cache_dir) / "onnx" / f"{plan.model}-random-{key}")}
    return Setup(model, random_vae_tokenizer(device), device, precision, info=info)
