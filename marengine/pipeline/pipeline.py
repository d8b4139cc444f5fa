"""MARPipeline: one object holding the model, its tokenizer and the sampling settings.

    pipe = MARPipeline.from_pretrained("runs/demo/ema")            # or last.pth, or an official file
    out = pipe([3, 1, 4], seed=0)                                   # out.images: PIL, out.array: uint8
    out = pipe.indexed(labels)                                      # each block's noise fixed by its index
    out = pipe.inpaint(images, mask, labels=[7, 2])                 # mask: pixels to fill (True)
    out = pipe.outpaint(small_images, labels, padding=(0, 0, 4, 0)) # extend to the model's size
    out = pipe.complete(latents, known_mask, labels)                # known tokens in latent space

Editing keeps the known tokens exactly (pixels bit for bit with the pixel tokenizer, the
encoded latents with the VAE), generates the others with the same loop as sampling (the
random order covers the unknown tokens only, the cosine schedule starts where that many
tokens are known, CFG as usual), and batches images with the same number of known tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import editing
from ..checks import check_labels
from ..models.loading import load_model
from ..models.tokenizers import build_tokenizer, describe_tokenizer, to_uint8
from ..sampling.balanced import generate_indexed
from ..sampling.engine import SampleSettings, generate_latents
from ..utils import resolve_device


@dataclass
class PipelineOutput:
    array: np.ndarray  # uint8 [N, H, W, C]
    labels: list[int]
    latents: torch.Tensor | None = None  # [N, C, h, w] as MAR sees them, when asked for

    @property
    def images(self) -> list:
        """PIL images."""
        from PIL import Image

        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in self.array]


class MARPipeline:
    def __init__(
        self,
        model: nn.Module,
        tokenizer: nn.Module,
        settings: SampleSettings | None = None,
        tokenizer_spec: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer.eval()
        self.settings = settings or SampleSettings()
        self.tokenizer_spec = tokenizer_spec
        self.device = model.fake_latent.device

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        config: Any = None,
        vae_ckpt: str | os.PathLike | None = None,
        use_ema: bool = True,
        settings: SampleSettings | None = None,
    ) -> MARPipeline:
        """A pretrained folder (ours), a training checkpoint or an official checkpoint (with
        `config`, e.g. "mar_base", and the VAE's `vae_ckpt`). dtype: the model's weights
        (e.g. torch.bfloat16 on a GPU; the head's chain state stays fp32)."""
        dev = resolve_device(device)
        loaded = load_model(path, config=config, use_ema=use_ema, vae_ckpt=vae_ckpt, device=dev)
        if loaded.tokenizer_spec is None:
            raise ValueError(f"{path}: no tokenizer fits this model's latents; images cannot be made")
        model = loaded.model if dtype is None else loaded.model.to(dtype)
        tokenizer = build_tokenizer(loaded.tokenizer_spec).to(dev)
        return cls(model, tokenizer, settings, loaded.tokenizer_spec)

    def save_pretrained(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """A folder from_pretrained reads back: config.json, model.safetensors, tokenizer.json
        (an earlier one marengine wrote is replaced only when `overwrite`; other files never)."""
        spec = self.tokenizer_spec or _spec_of(self.tokenizer)
        return self.model.save_pretrained(folder, tokenizer=spec, overwrite=overwrite)

    # ---------------------------------------------------------------- generation
    @property
    def image_size(self) -> int:
        return self.model.img_size

    @property
    def image_channels(self) -> int:
        return int(getattr(self.tokenizer, "channels", 3))  # the pixel tokenizer's, else RGB (the VAE)

    def __call__(
        self,
        labels: Sequence[int] | Any,
        settings: SampleSettings | None = None,
        *,
        generator: torch.Generator | None = None,
        return_latents: bool = False,
        progress: bool | None = None,
        **overrides: Any,
    ) -> PipelineOutput:
        """Images for class `labels` (one each). settings: this call's (default: the pipeline's),
        with keyword overrides (num_iter=, cfg=, preset=, ...); generator: the randomness
        (default: a generator seeded with settings.seed)."""
        return self._run(
            labels, settings, dict(overrides, generator=generator, return_latents=return_latents, progress=progress)
        )

    def indexed(
        self, labels: Sequence[int] | Any, settings: SampleSettings | None = None, **overrides: Any
    ) -> PipelineOutput:
        """Images for class `labels` in blocks of settings.batch_size, each block's randomness seeded
        by settings.seed and the index of its first image (sampling.balanced): the same images
        however the blocks are split between runs or processes (marengine sample --num-images,
        marengine evaluate)."""
        s = self._settings(settings, overrides)
        labels = check_labels(labels, self.model.num_classes)
        return PipelineOutput(generate_indexed(self.model, self.tokenizer, np.asarray(labels, np.int64), s), labels)

    def inpaint(
        self, images: Any, mask: Any, labels: Sequence[int] | Any, settings: SampleSettings | None = None, **kw: Any
    ) -> PipelineOutput:
        """Fill the pixels where `mask` is True (a [H, W] mask for all images or [N, H, W]).
        A token is kept when all its pixels are known; the rest is generated for `labels`."""
        x = self._images(images)
        return self._edit(x, editing.pixel_mask(mask, x.shape[0], self.image_size), labels, settings, kw)

    def outpaint(
        self,
        images: Any,
        labels: Sequence[int] | Any,
        *,
        padding: Sequence[int] | None = None,
        region: Sequence[int] | None = None,
        settings: SampleSettings | None = None,
        **kw: Any,
    ) -> PipelineOutput:
        """Generate around the given content. padding=(left, top, right, bottom): the images
        are smaller than the model's and placed inside its canvas; or region=(x0, y0, x1, y1):
        full-size images whose region is kept and the rest generated."""
        if (padding is None) == (region is None):
            raise ValueError("give exactly one of padding=(left, top, right, bottom) or region=(x0, y0, x1, y1)")
        if padding is not None:
            small = editing.as_uint8_images(images, self.image_channels)
            if small.shape[-1] != self.image_channels:
                raise ValueError(f"the model's images have {self.image_channels} channel(s), got {small.shape[-1]}")
            canvas, pixel = editing.pad_images(small, padding, self.image_size)
            x = self._images(canvas)
        else:
            x = self._images(images)
            pixel = ~editing.box_mask(region, self.image_size)
        return self._edit(x, editing.pixel_mask(pixel, x.shape[0], self.image_size), labels, settings, kw)

    def complete(
        self,
        latents: torch.Tensor,
        known_mask: Any,
        labels: Sequence[int] | Any,
        settings: SampleSettings | None = None,
        **kw: Any,
    ) -> PipelineOutput:
        """Class-conditional completion in latent space: latents [N, C, h, w] (as MAR sees them,
        e.g. tokenizer.encode(x).mode()), known_mask [N, h, w] or [h, w] (True = the latent
        position is given); the others are generated."""
        m = self.model
        side = m.seq_h * m.patch_size
        if (
            not isinstance(latents, torch.Tensor)
            or latents.ndim != 4
            or latents.shape[1:] != (m.vae_embed_dim, side, side)
        ):
            raise ValueError(f"latents must be a tensor [N, {m.vae_embed_dim}, {side}, {side}]")
        n = latents.shape[0]
        given = editing.pixel_mask(known_mask, n, side)  # True = given, at latent resolution
        known = torch.from_numpy(editing.token_mask(~given, m.patch_size)).to(self.device)  # all its cells given
        return self._run(labels, settings, kw, m.patchify(latents.float().to(self.device)), known)

    def engine(self, **kw: Any) -> Any:
        """A started GenerationEngine over this pipeline (continuous batching: submit / stream /
        result; pipeline/engine.py). kw: max_batch_rows, max_queue."""
        from .engine import GenerationEngine

        return GenerationEngine(self, **kw)

    def edit_inputs(self, images: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [N, L, C], known [N, L] bool) of inpainting `images` where `mask` (pixels to
        fill, True) is given: what inpaint() samples from (for the engine)."""
        x = self._images(images)
        return self._known(x, editing.pixel_mask(mask, x.shape[0], self.image_size))

    # ---------------------------------------------------------------- internals
    def _images(self, images: Any) -> torch.Tensor:
        """[N, C, H, W] float32 in [-1, 1] on the device: float tensors as given, else uint8 images."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            x = images.detach().float().unsqueeze(0) if images.ndim == 3 else images.detach().float()
            shape = (self.image_channels, self.image_size, self.image_size)
            if x.ndim != 4 or x.shape[1:] != shape:
                raise ValueError(f"float images must be [N, {', '.join(map(str, shape))}], got {list(x.shape)}")
            if not torch.isfinite(x).all() or x.abs().max() > 1.0:
                raise ValueError("float images must be finite and in [-1, 1]")
            return x.to(self.device)
        arr = editing.as_uint8_images(
            images.cpu().numpy() if isinstance(images, torch.Tensor) else images, self.image_channels
        )
        editing.check_images(arr, self.image_channels, self.image_size)
        return torch.from_numpy(editing.to_unit_range(arr)).to(self.device)

    def _edit(self, x: torch.Tensor, pixel: np.ndarray, labels: Any, settings: Any, kw: dict) -> PipelineOutput:
        return self._run(labels, settings, kw, *self._known(x, pixel))

    def _known(self, x: torch.Tensor, pixel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [N, L, C], known [N, L]) of images x whose pixels `pixel` (True) are to be filled."""
        patch = self.tokenizer.stride * self.model.patch_size
        known = torch.from_numpy(editing.token_mask(pixel, patch)).to(self.device)  # [N, L]
        with torch.no_grad():
            latents = self.tokenizer.encode(x.to(self.device)).mode()  # [N, C, h, w] as MAR sees them, or codes
        tokens = self.model.patchify(latents) if latents.is_floating_point() else latents.flatten(1)  # [N, L(, C)]
        return tokens, known

    def _settings(self, settings: SampleSettings | None, overrides: dict[str, Any]) -> SampleSettings:
        """This call's settings (default: the pipeline's) with keyword `overrides` of their fields."""
        s = settings or self.settings
        if not isinstance(s, SampleSettings):
            raise TypeError(f"settings must be a SampleSettings, got {type(s).__name__}")
        return replace(s, **overrides) if overrides else s

    @torch.no_grad()
    def _run(
        self,
        labels: Any,
        settings: SampleSettings | None,
        kw: dict[str, Any],
        tokens: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
    ) -> PipelineOutput:
        """Generate (or complete) through sampling.engine.generate_latents, decode, package. kw:
        generator, return_latents, progress, and overrides of the settings' fields."""
        generator, want_latents, progress = (
            kw.pop("generator", None),
            kw.pop("return_latents", False),
            kw.pop("progress", None),
        )
        s = self._settings(settings, kw)
        labels = check_labels(labels, self.model.num_classes)
        latents = generate_latents(
            self.model,
            labels,
            s,
            bounded=bool(getattr(self.tokenizer, "bounded", False)),
            generator=generator,
            known_tokens=tokens,
            known_mask=known,
            progress=True if progress is None else progress,
        )
        images = to_uint8(self.tokenizer.decode(latents)).cpu().numpy()
        return PipelineOutput(images, labels, latents if want_latents else None)


def _spec_of(tokenizer: nn.Module) -> dict[str, Any]:
    info = describe_tokenizer(tokenizer)
    if info["kind"] == "pixel":
        return {"kind": "pixel", "channels": info["image_channels"], "stride": info["stride"]}
    raise ValueError("a VAE tokenizer's spec needs its weights path: build the pipeline with from_pretrained")
