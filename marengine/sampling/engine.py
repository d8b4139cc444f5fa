"""Generation end to end: class labels -> tokens (backbone + head) -> images."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..config import SAMPLE_DEFAULTS
from ..models.mar import MAR
from ..models.tokenizers import to_uint8

log = logging.getLogger("marengine.sampling")


@dataclass
class SampleSettings:
    num_iter: int = SAMPLE_DEFAULTS.num_iter
    cfg: float = SAMPLE_DEFAULTS.cfg
    cfg_schedule: str = SAMPLE_DEFAULTS.cfg_schedule
    temperature: float = SAMPLE_DEFAULTS.temperature
    seed: int = 0
    batch_size: int = 64
    backend: str = "auto"
    clip_denoised: bool | None = None  # None: as the tokenizer says (pixels are bounded, VAE latents are not)


@torch.no_grad()
def generate(
    model: MAR, tokenizer, labels: list[int] | torch.Tensor, settings: SampleSettings, progress: bool = False
) -> np.ndarray:
    """uint8 images [N, H, W, C] for `labels`, in batches, seeded by settings.seed."""
    device = model.fake_latent.device
    labels = torch.as_tensor(labels, dtype=torch.int64)
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    num_iter = settings.num_iter
    if num_iter > model.seq_len:
        log.warning("num_iter %d exceeds the %d tokens of an image: using %d", num_iter, model.seq_len, model.seq_len)
        num_iter = model.seq_len
    clip = settings.clip_denoised if settings.clip_denoised is not None else getattr(tokenizer, "bounded", False)
    out = []
    for start in range(0, len(labels), settings.batch_size):
        batch = labels[start : start + settings.batch_size].to(device)
        latents = model.sample_tokens(
            len(batch),
            num_iter,
            settings.cfg,
            settings.cfg_schedule,
            batch,
            settings.temperature,
            progress,
            generator=gen,
            backend=settings.backend,
            clip_denoised=clip,
        )
        out.append(to_uint8(tokenizer.decode(latents.float())).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1, 1, 1), np.uint8)
