"""Building what a run needs from its settings: device, precision, data, tokenizer, model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import MARConfig
from ..models.family import make_model
from .config import PRECISIONS, TrainConfig
from .data import DigitsDataset, ImageFolderDataset
from .latent_dataset import is_latent_cache, open_latents

DIGITS_SIZES = {"digits": 8, "digits16": 16}  # the bundled digits, and the same upsampled to 16x16


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise ValueError("fp16 training needs a GPU (no fp16 GEMMs worth using on CPU); use bf16 or fp32")
    return name


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def build_dataset(cfg: TrainConfig, model_cfg: MARConfig):
    """(dataset, yields_latents)."""
    if cfg.data in DIGITS_SIZES:
        size = DIGITS_SIZES[cfg.data]
        if model_cfg.img_size != size:
            raise ValueError(
                f"data {cfg.data!r} holds {size}x{size} images, the model config says img_size={model_cfg.img_size}"
            )
        return DigitsDataset("train", size=size), False
    path = Path(cfg.data)
    if is_latent_cache(path):
        from ..config import VAE_LATENT_SCALE

        ds = open_latents(path, VAE_LATENT_SCALE)
        side = model_cfg.img_size // model_cfg.vae_stride
        want = (model_cfg.vae_embed_dim, side, side)
        if tuple(ds.latent_shape) != want:
            raise ValueError(
                f"the latent cache {path} holds latents of shape {tuple(ds.latent_shape)} [C, h, w], "
                f"the model expects {want} (vae_embed_dim, img_size / vae_stride, ...); set "
                "model_overrides img_size / vae_embed_dim to fit, or re-cache at the model's size"
            )
        return ds, True
    return ImageFolderDataset(path, model_cfg.img_size, crop=cfg.crop), False


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The family member `cfg.model` with loss `cfg.loss` (MAR, MAR with CE, or a causal AR)."""
    overrides = dict(cfg.model_overrides)
    if cfg.grad_checkpointing:
        overrides["grad_checkpointing"] = True
    return make_model(cfg.model, cfg.loss, **overrides)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Official grouping: no decay for biases, 1-D parameters and the Diffusion-Loss MLP."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim == 1 or name.endswith(".bias") or "diffloss" in name else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
