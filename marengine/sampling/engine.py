"""Generation end to end: class labels -> tokens (backbone + head) -> images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checks import Rules, check_bool, check_choice, check_fields, check_float, check_int, check_labels, check_str
from ..config import HEAD_BACKENDS as BACKENDS
from ..config import SAMPLE_DEFAULTS, SAMPLING_PRESETS, SamplingPreset, resolve_preset
from ..diffusion.samplers import HeadSampler
from ..editing import batches
from ..models.backbone_cache import CachePolicy
from ..models.mar import MAR
from ..models.tokenizers import to_uint8
from ..schedules import CFG_SCHEDULES, step_schedule
from ..utils import check_generator

log = logging.getLogger("marengine.sampling")


SETTINGS_RULES: Rules = {
    "num_iter": (check_int, {"lo": 1}),
    "cfg": (check_float, {"lo": 1.0, "hint": "1 disables guidance"}),
    "cfg_schedule": (check_choice, {"choices": CFG_SCHEDULES}),
    "temperature": (check_float, {"lo": 0.0}),
    "seed": (check_int, {"lo": 0, "hi": 2**63 - 1}),
    "batch_size": (check_int, {"lo": 1}),
    "backend": (check_choice, {"choices": BACKENDS}),
    "clip_denoised": (check_bool, {"optional": True}),
    "preset": (check_choice, {"choices": tuple(SAMPLING_PRESETS)}),
    "sampler": (check_str, {"optional": True}),
    "cache": (check_str, {"optional": True}),
}


@dataclass
class SampleSettings:
    """How to sample (checked when made): the official defaults unless changed."""

    num_iter: int = SAMPLE_DEFAULTS.num_iter
    cfg: float = SAMPLE_DEFAULTS.cfg
    cfg_schedule: str = SAMPLE_DEFAULTS.cfg_schedule
    temperature: float = SAMPLE_DEFAULTS.temperature
    seed: int = 0
    batch_size: int = 64
    backend: str = "auto"
    clip_denoised: bool | None = None  # None: as the tokenizer says (pixels are bounded, VAE latents are not)
    preset: str = "official"  # config.SAMPLING_PRESETS: how the head and the backbone run
    sampler: str | None = None  # the preset's head sampler unless given: ddpm | ddim[:eta] | dpm++2m
    steps: int | str | list[int] | None = None  # the preset's head steps per iteration unless given
    cache: str | None = None  # the preset's backbone reuse unless given ("off" disables it)

    def __post_init__(self) -> None:
        check_fields(self, SETTINGS_RULES, "sampling setting")
        speed = self.speed()  # every knob checked now, before any work
        HeadSampler.parse(speed.sampler)
        step_schedule(speed.steps, self.num_iter)
        CachePolicy.parse(speed.cache)

    def speed(self) -> SamplingPreset:
        """The preset with the explicitly given knobs applied."""
        return resolve_preset(self.preset, self.sampler, self.steps, self.cache)

    def options(self) -> dict[str, Any]:
        """The keyword options of MAR.sample_tokens these settings ask for."""
        speed = self.speed()
        return {"backend": self.backend, "sampler": speed.sampler, "steps": speed.steps, "cache": speed.cache}


@torch.no_grad()
def generate_latents(
    model: MAR,
    labels: Sequence[int] | Any,
    settings: SampleSettings,
    *,
    bounded: bool = False,
    generator: torch.Generator | None = None,
    known_tokens: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Latents [N, C, h, w] for class `labels`, in batches of settings.batch_size (images with
    the same number of known tokens batched together when editing), all randomness from
    `generator` (default: one seeded with settings.seed). bounded: the tokenizer's latents lie
    in [-1, 1] (clip_denoised=None then clips). known_tokens [N, L, C] / known_mask [N, L]:
    editing, those tokens are kept exactly."""
    if not isinstance(settings, SampleSettings):
        raise TypeError(f"settings must be a SampleSettings, got {type(settings).__name__}")
    device = model.fake_latent.device
    labels = check_labels(labels, model.num_classes)
    n = len(labels)
    if known_tokens is not None and known_tokens.shape[0] != n:
        raise ValueError(f"{known_tokens.shape[0]} images but {n} labels: give one label per image")
    gen = check_generator(generator) or torch.Generator(device=device).manual_seed(settings.seed)
    num_iter = settings.num_iter
    if num_iter > model.seq_len:
        log.warning("num_iter %d exceeds the %d tokens of an image: using %d", num_iter, model.seq_len, model.seq_len)
        num_iter = model.seq_len
    clip = settings.clip_denoised if settings.clip_denoised is not None else bounded
    side = model.seq_h * model.patch_size
    out = torch.empty(n, model.vae_embed_dim, side, side, device=device)
    groups = batches(None if known_mask is None else known_mask.cpu().numpy(), n, settings.batch_size)
    for idx in tqdm(groups, desc="generating", disable=not progress or len(groups) < 2):
        idx = idx.tolist()
        edit = {} if known_mask is None else {"known_tokens": known_tokens[idx], "known_mask": known_mask[idx]}
        batch = torch.tensor([labels[i] for i in idx], dtype=torch.int64, device=device)
        out[idx] = model.sample_tokens(
            len(idx),
            num_iter,
            settings.cfg,
            settings.cfg_schedule,
            batch,
            settings.temperature,
            progress and len(groups) == 1,
            generator=gen,
            clip_denoised=clip,
            **settings.options(),
            **edit,
        ).float()
    return out


@torch.no_grad()
def generate(
    model: MAR, tokenizer, labels: Sequence[int] | Any, settings: SampleSettings, progress: bool = False
) -> np.ndarray:
    """uint8 images [N, H, W, C] for `labels` (class indices), in batches, seeded by settings.seed."""
    latents = generate_latents(model, labels, settings, bounded=getattr(tokenizer, "bounded", False), progress=progress)
    if latents.shape[0] == 0:
        return np.zeros((0, 1, 1, 1), np.uint8)
    return to_uint8(tokenizer.decode(latents)).cpu().numpy()
