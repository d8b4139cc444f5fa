"""The backends compared side by side, as zero-argument callables that generate one batch of
images (tokens, then the tokenizer's decode):

  official       the eager anchor of the official sampling semantics (bench/official.py)
  engine-torch   `MAR.sample_tokens`, head sampler backend="torch" (the PyTorch reference)
  engine-native  `MAR.sample_tokens`, head sampler backend="native" (the compiled kernels)
  onnx-native    the backbone on onnxruntime (`OnnxBackboneModule`), the native head

Every call reseeds its generator, so all backends do the same work on every repeat. With
a `StageClock` the backbone, head and decode calls are timed (what is left is "other").
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..models.mar import MAR
from ..sampling.engine import SampleSettings, generate_latents
from . import official
from .timing import StageClock

BACKENDS = ("official", "engine-torch", "engine-native", "onnx-native")
AMP = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: fp16 autocast on a GPU (what the official evaluation runs under), fp32 on the CPU."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in AMP:
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    return precision


@dataclass
class Setup:
    """A model ready to be timed: the MAR, its tokenizer, and the ONNX backbone if exported."""

    model: MAR
    tokenizer: nn.Module
    device: torch.device
    precision: str = "fp32"
    onnx_backbone: Callable[..., Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AMP[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)


def export_onnx_backbone(setup: Setup, folder: str | Path, threads: int) -> str | None:
    """Export the backbone (class-embedding variant) to `folder`, or reuse the export already
    there (the folder must be specific to the model's weights), and open it on onnxruntime;
    None (with the reason in setup.info["onnx_skipped"]) when onnx/onnxruntime are missing."""
    try:
        from ..export.onnx import export_onnx
        from ..export.runtime import FILES, OnnxBackbone, OnnxBackboneModule, import_onnxruntime

        ort = import_onnxruntime()
    except ImportError as e:
        setup.info["onnx_skipped"] = str(e)
        return None
    folder = Path(folder)
    path = folder / FILES["backbone_embed"]
    if path.is_file():
        setup.info["onnx_export_s"] = None  # reused
    else:
        t0 = time.perf_counter()
        path = export_onnx(setup.model.cpu(), folder, parts=("backbone_embed",))["backbone_embed"]
        setup.model.to(setup.device)
        setup.info["onnx_export_s"] = round(time.perf_counter() - t0, 2)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # idle ORT threads must not spin: the head runs right after the backbone on the same cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if setup.device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            setup.info["onnx_skipped"] = "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)"
            return None
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    setup.onnx_backbone = OnnxBackboneModule(OnnxBackbone(path, providers, opts))
    setup.info["onnx_providers"] = providers[0]
    return str(path)


@contextlib.contextmanager
def timed_head(model: MAR, clock: StageClock | None):
    """Time every `model.diffloss.sample` call while inside (an instance attribute shadows the method)."""
    if clock is None:
        yield
        return
    model.diffloss.sample = clock.wrap("head", type(model.diffloss).sample.__get__(model.diffloss))
    try:
        yield
    finally:
        del model.diffloss.sample


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def make_run(
    setup: Setup,
    backend: str,
    batch: int,
    num_iter: int,
    cfg: float,
    temperature: float = 1.0,
    cfg_schedule: str = "linear",
    seed: int = 0,
    clock: StageClock | None = None,
) -> Callable[[], torch.Tensor]:
    """A callable generating `batch` images [B, ch, H, W] with `backend` (see the module doc)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose among {BACKENDS}")
    if backend == "onnx-native" and setup.onnx_backbone is None:
        raise ValueError("onnx-native needs the exported backbone: call export_onnx_backbone first")
    model, device = setup.model, setup.device
    labels = (torch.arange(batch) % model.num_classes).to(device)
    wrap = clock.wrap if clock is not None else (lambda name, fn: fn)
    decode = wrap("decode", setup.tokenizer.decode)

    def run() -> torch.Tensor:
        gen = generator_for(device, seed)
        with torch.no_grad(), setup.autocast():
            if backend == "official":
                latents = official.sample_tokens(
                    model, batch, num_iter, cfg, cfg_schedule, labels, temperature, generator=gen, wrap=wrap
                )
            else:
                backbone = setup.onnx_backbone if backend == "onnx-native" else model.backbone
                with timed_head(model, clock):
                    latents = model.sample_tokens(
                        batch,
                        num_iter,
                        cfg,
                        cfg_schedule,
                        labels,
                        temperature,
                        generator=gen,
                        backend="torch" if backend == "engine-torch" else "native",
                        backbone=wrap("backbone", backbone),
                    )
            return decode(latents.float())

    return run


def make_preset_run(
    setup: Setup, preset: str, batch: int, num_iter: int, cfg: float, temperature: float = 1.0, seed: int = 0
) -> Callable[[], torch.Tensor]:
    """A callable generating `batch` images [B, ch, H, W] with the engine under the sampling
    preset `preset` (config.SAMPLING_PRESETS: head sampler, steps, backbone reuse, order),
    tokens then the tokenizer's decode, reseeded on every call."""
    model = setup.model
    labels = [i % model.num_classes for i in range(batch)]
    settings = SampleSettings(
        num_iter=num_iter, cfg=cfg, temperature=temperature, seed=seed, batch_size=batch, preset=preset
    )
    bounded = bool(getattr(setup.tokenizer, "bounded", False))

    def run() -> torch.Tensor:
        with torch.no_grad(), setup.autocast():
            return setup.tokenizer.decode(generate_latents(model, labels, settings, bounded=bounded).float())

    return run
