"""Tokenizers: images <-> the latent grids MAR models.

Both share one interface: `encode(imgs [B, 3|1, H, W] in [-1, 1])` returns a
posterior with `sample(generator)` and `mode()` giving latents already scaled
for MAR, `decode(latents)` returns images in [-1, 1]; `embed_dim` and `stride`
give the latent channels and the downsampling factor (MAR's `vae_embed_dim`
and `vae_stride`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VAE_LATENT_SCALE
from .vae import AutoencoderKL, DiagonalGaussian


@dataclass
class PointPosterior:
    """A deterministic 'posterior': sample and mode are the same latents."""

    latents: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latents

    def mode(self) -> torch.Tensor:
        return self.latents


@dataclass
class ScaledPosterior:
    """A VAE posterior whose samples are multiplied by `scale`."""

    posterior: DiagonalGaussian
    scale: float

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.posterior.sample(generator) * self.scale

    def mode(self) -> torch.Tensor:
        return self.posterior.mode() * self.scale


class PixelTokenizer(nn.Module):
    """No VAE: each stride x stride pixel patch is one latent position with
    channels * stride^2 values (space-to-depth). For small images (digits).
    Its latents are bounded to [-1, 1], so samplers may clip x_0 predictions."""

    bounded = True

    def __init__(self, channels: int = 1, stride: int = 2) -> None:
        super().__init__()
        self.channels, self.stride = channels, stride
        self.embed_dim = channels * stride * stride

    def encode(self, imgs: torch.Tensor) -> PointPosterior:  # [B, c, H, W] -> [B, c s s, H/s, W/s]
        if imgs.ndim != 4 or imgs.shape[1] != self.channels:
            raise ValueError(f"images must be [batch, {self.channels}, H, W], got {tuple(imgs.shape)}")
        if imgs.shape[2] % self.stride or imgs.shape[3] % self.stride:
            raise ValueError(f"image size {tuple(imgs.shape[2:])} is not divisible by the stride {self.stride}")
        return PointPosterior(F.pixel_unshuffle(imgs, self.stride))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.stride)


class VAETokenizer(nn.Module):
    """The KL-16 VAE with MAR's latent scale (0.2325)."""

    bounded = False

    def __init__(self, vae: AutoencoderKL, scale: float = VAE_LATENT_SCALE) -> None:
        super().__init__()
        self.vae, self.scale = vae, scale
        self.embed_dim, self.stride = vae.embed_dim, vae.downsample_factor

    def encode(self, imgs: torch.Tensor) -> ScaledPosterior:
        return ScaledPosterior(self.vae.encode(imgs), self.scale)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale)


def to_uint8(imgs: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> uint8 [B, H, W, C]."""
    x = ((imgs.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()
