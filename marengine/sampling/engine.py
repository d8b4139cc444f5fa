"""Generation end to end: class labels -> tokens (backbone + head) -> images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checks import (
    CFG_BOUNDS,
    TEMPERATURE_BOUNDS,
    Rules,
    check_bool,
    check_choice,
    check_fields,
    check_float,
    check_int,
    check_labels,
    check_str,
)
from ..config import HEAD_BACKENDS as BACKENDS
from ..config import SAMPLE_DEFAULTS, SAMPLING_PRESETS, SamplingPreset, resolve_preset
from ..diffusion.samplers import HeadSampler
from ..editing import batches
from ..models.backbone_cache import CachePolicy
from ..models.mar import MAR
from ..models.tokenizers import to_uint8
from ..ops.precision import precision_context
from ..schedules import CFG_SCHEDULES, TokenSteps, step_schedule
from ..utils import check_generator

log = logging.getLogger("marengine.sampling")


SETTINGS_RULES: Rules = {
    "num_iter": (check_int, {"lo": 1}),
    "cfg": (check_float, CFG_BOUNDS),
    "cfg_schedule": (check_choice, {"choices": CFG_SCHEDULES}),
    "temperature": (check_float, TEMPERATURE_BOUNDS),
    "seed": (check_int, {"lo": 0, "hi": 2**63 - 1}),
    "batch_size": (check_int, {"lo": 1}),
    "backend": (check_choice, {"choices": BACKENDS}),
    "clip_denoised": (check_bool, {"optional": True}),
    "preset": (check_choice, {"choices": tuple(SAMPLING_PRESETS)}),
    "sampler": (check_str, {"optional": True}),
    "cache": (check_str, {"optional": True}),
    "precision": (check_str, {"optional": True}),
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
    order: str | None = None  # the preset's generation order unless given: random | halton | lattice
    precision: str | None = None  # the preset's matmul precision unless given: fp32 | bf16 | auto
    token_steps: str | None = None  # the preset's per-token head steps unless given ("off" disables them)

    def __post_init__(self) -> None:
        check_fields(self, SETTINGS_RULES, "sampling setting")
        speed = self.speed()  # every knob checked now, before any work (order, precision: resolve_preset)
        HeadSampler.parse(speed.sampler)
        step_schedule(speed.steps, self.num_iter)
        CachePolicy.parse(speed.cache)
        TokenSteps.parse(speed.token_steps)

    def speed(self) -> SamplingPreset:
        """The preset with the explicitly given knobs applied."""
        return resolve_preset(
            self.preset, self.sampler, self.steps, self.cache, self.order, self.precision, self.token_steps
        )

    def options(self, model: Any = None) -> dict[str, Any]:
        """The keyword options of `model`.sample_tokens these settings ask for (None: MAR's).

        A model takes the speed knobs of its `sampling_knobs`; a preset's knob it does not take
        is left out (a cross-entropy model has no diffusion head to speed up), a knob the user
        gave explicitly is refused with a clear error."""
        speed = self.speed()
        knobs = {"sampler": speed.sampler, "steps": speed.steps, "cache": speed.cache, "order": speed.order}
        knobs["token_steps"] = speed.token_steps
        takes = knobs.keys() if model is None else set(getattr(model, "sampling_knobs", ()))
        for name in knobs.keys() - takes:
            if getattr(self, name) not in (None, "off"):
                raise ValueError(
                    f"{name}={getattr(self, name)!r} does not apply to a {type(model).__name__} "
                    f"({_describe(model)}): it takes {', '.join(sorted(takes)) or 'none of the speed knobs'}; drop it"
                )
        return {"backend": self.backend, **{k: v for k, v in knobs.items() if k in takes}}


def _describe(model: Any) -> str:
    loss = getattr(model, "loss", "diffusion")
    order = "one token per step" if getattr(model, "causal", False) else "masked, several tokens per iteration"
    return f"{order}, {'Diffusion Loss' if loss == 'diffusion' else 'cross-entropy over codes'}"


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
    """Latents [N, C, h, w] (codes [N, h, w] for a cross-entropy model) for class `labels`, in
    batches of settings.batch_size (images with the same number of known tokens batched together
    when editing), all randomness from `generator` (default: one seeded with settings.seed).
    bounded: the tokenizer's latents lie in [-1, 1] (clip_denoised=None then clips).
    known_tokens [N, L, C] / known_mask [N, L]: editing, those tokens are kept exactly."""
    if not isinstance(settings, SampleSettings):
        raise TypeError(f"settings must be a SampleSettings, got {type(settings).__name__}")
    device = model.fake_latent.device
    labels = check_labels(labels, model.num_classes)
    n = len(labels)
    if known_tokens is not None and known_tokens.shape[0] != n:
        raise ValueError(f"{known_tokens.shape[0]} images but {n} labels: give one label per image")
    gen = check_generator(generator) or torch.Generator(device=device).manual_seed(settings.seed)
    num_iter: int | None = settings.num_iter
    if getattr(model, "causal", False):
        if num_iter == SAMPLE_DEFAULTS.num_iter:
            num_iter = None  # the default: its L tokens (any other count is checked by the model)
        if known_mask is not None:
            raise ValueError("editing (known tokens) needs a masked model (MAR): a causal model generates in order")
    elif num_iter > model.seq_len:
        log.warning("num_iter %d exceeds the %d tokens of an image: using %d", num_iter, model.seq_len, model.seq_len)
        num_iter = model.seq_len
    clip = settings.clip_denoised if settings.clip_denoised is not None else bounded
    options = settings.options(model)
    precision = settings.speed().precision
    out: torch.Tensor | None = None  # latents [N, C, H', W'] or codes [N, h, w], made from the first batch
    groups = batches(None if known_mask is None else known_mask.cpu().numpy(), n, settings.batch_size)
    for idx in tqdm(groups, desc="generating", disable=not progress or len(groups) < 2):
        idx = idx.tolist()
        edit = {} if known_mask is None else {"known_tokens": known_tokens[idx], "known_mask": known_mask[idx]}
        batch = torch.tensor([labels[i] for i in idx], dtype=torch.int64, device=device)
        with precision_context(precision, device):
            tokens = model.sample_tokens(
                len(idx),
                num_iter,
                settings.cfg,
                settings.cfg_schedule,
                batch,
                settings.temperature,
                progress and len(groups) == 1,
                generator=gen,
                clip_denoised=clip,
                **options,
                **edit,
            )
        tokens = tokens.float() if tokens.is_floating_point() else tokens
        if out is None:
            out = tokens.new_empty((n, *tokens.shape[1:]))
        out[idx] = tokens
    if out is None:  # no labels
        side = model.seq_h * model.patch_size
        out = torch.empty(0, model.vae_embed_dim, side, side, device=device)
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
