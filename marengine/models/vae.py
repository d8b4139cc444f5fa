"""KL-regularised convolutional autoencoder (the LDM "KL-16" VAE used by MAR).

MAR does not generate pixels: images are mapped by this autoencoder to a
16-channel latent at 1/16 resolution, MAR models those latents, and the decoder
turns them back into images.  The module tree below is laid out so that its
`state_dict` keys and shapes are identical to the official `kl16.ckpt`
(`torch.load(path)["model"]`), which therefore loads with `strict=True`.

Layout (default settings, ch=128, ch_mult=(1, 1, 2, 2, 4)):

    encoder: conv_in -> down[0..4] (2 ResnetBlocks each, a stride-2 conv
             between levels, self-attention after each block of the level whose
             nominal resolution is 16) -> mid (resnet, attention, resnet) ->
             GroupNorm + swish -> conv_out (2 * embed_dim channels)
    quant_conv: 1x1, 2 * embed_dim -> 2 * embed_dim  (mean, logvar)
    post_quant_conv: 1x1, embed_dim -> embed_dim
    decoder: conv_in -> mid -> up[4..0] (3 ResnetBlocks each, nearest x2 +
             conv between levels) -> GroupNorm + swish -> conv_out (3 channels)

Nothing here assumes a device: tensors follow the module and the inputs.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import load_strict, pick_state_dict, read_checkpoint

GROUPNORM_GROUPS = 32
GROUPNORM_EPS = 1e-6
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPNORM_GROUPS, channels, eps=GROUPNORM_EPS, affine=True)


def conv3x3(c_in: int, c_out: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=padding)


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1)


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


class Downsample(nn.Module):
    """Halve H and W with a 3x3 stride-2 conv after zero padding right/bottom by one."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1))  # [B, C, H+1, W+1]
        return self.conv(x)  # [B, C, H/2, W/2]


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # [B, C, 2H, 2W]
        return self.conv(x)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GN, swish, conv3x3) twice, plus a 1x1
    projection of the input when the channel count changes."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = c_in
        self.out_channels = c_out
        self.norm1 = group_norm(c_in)
        self.conv1 = conv3x3(c_in, c_out)
        self.norm2 = group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(c_out, c_out)
        if c_in != c_out:
            self.nin_shortcut = conv1x1(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))  # [B, C_out, H, W]
        h = self.conv2(self.dropout(swish(self.norm2(h))))  # [B, C_out, H, W]
        skip = self.nin_shortcut(x) if self.in_channels != self.out_channels else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels)

    @staticmethod
    def _tokens(t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        return t.reshape(b, 1, c, h * w).transpose(-1, -2)  # [B, 1, HW, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = self._tokens(self.q(n)), self._tokens(self.k(n)), self._tokens(self.v(n))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C], scale 1/sqrt(C)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # [B, C, H, W]
        return x + self.proj_out(out)


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (possibly empty) and
    an optional `downsample` / `upsample` registered by the owner."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        use_attn = len(self.attn) > 0
        for i, block in enumerate(self.block):
            h = block(h)
            if use_attn:
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    """ResnetBlock -> AttnBlock -> ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _make_level(c_in: int, c_out: int, n_blocks: int, with_attn: bool, dropout: float) -> _Level:
    blocks = [ResnetBlock(c_in if i == 0 else c_out, c_out, dropout) for i in range(n_blocks)]
    attns = [AttnBlock(c_out) for _ in range(n_blocks)] if with_attn else []
    return _Level(blocks, attns)


# --------------------------------------------------------------------------
# Encoder / Decoder
# --------------------------------------------------------------------------


class Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, 2*z_channels (or z_channels), H/f, W/f],
    f = 2 ** (len(ch_mult) - 1)."""

    def __init__(
        self,
        *,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        in_channels: int = 3,
        resolution: int = 256,
        z_channels: int = 16,
        double_z: bool = True,
    ) -> None:
        super().__init__()
        self.conv_in = conv3x3(in_channels, ch)
        self.down = nn.ModuleList()
        res = resolution  # nominal resolution; decides where attention sits
        c_in = ch
        for i, mult in enumerate(ch_mult):
            c_out = ch * mult
            level = _make_level(c_in, c_out, num_res_blocks, res in attn_resolutions, dropout)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            self.down.append(level)
            c_in = c_out
        self.mid = _Middle(c_in, dropout)
        self.norm_out = group_norm(c_in)
        self.conv_out = conv3x3(c_in, 2 * z_channels if double_z else z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, ch, H, W]
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # [B, C, H/2, W/2]
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))  # [B, 2*z, h, w]


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, out_ch, h*f, w*f], f = 2 ** (len(ch_mult) - 1).

    `up` is indexed by level like the encoder's `down` (up[0] is the
    full-resolution level) but runs from the last level to the first."""

    def __init__(
        self,
        *,
        ch: int = 128,
        out_ch: int = 3,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        resolution: int = 256,
        z_channels: int = 16,
    ) -> None:
        super().__init__()
        n_levels = len(ch_mult)
        c_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n_levels - 1)
        self.conv_in = conv3x3(z_channels, c_in)
        self.mid = _Middle(c_in, dropout)
        levels: list[_Level] = []
        for i in reversed(range(n_levels)):
            c_out = ch * ch_mult[i]
            level = _make_level(c_in, c_out, num_res_blocks + 1, res in attn_resolutions, dropout)
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            levels.append(level)
            c_in = c_out
        self.up = nn.ModuleList(reversed(levels))  # up[i] <-> resolution level i
        self.norm_out = group_norm(c_in)
        self.conv_out = conv3x3(c_in, out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # [B, C_top, h, w]
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # [B, C, 2h, 2w]
        return self.conv_out(swish(self.norm_out(h)))  # [B, out_ch, H, W]


# --------------------------------------------------------------------------
# Posterior
# --------------------------------------------------------------------------


class DiagonalGaussian:
    """Diagonal Gaussian over latents, built from [B, 2*C, h, w] moments
    (first half mean, second half log-variance clamped to [-30, 20])."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.moments = moments
        mean, logvar = torch.chunk(moments, 2, dim=1)
        self.mean = mean  # [B, C, h, w]
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)  # [B, C, h, w]
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps; eps drawn from `generator` (global RNG if None)."""
        dev = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=dev, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to the standard normal, summed over C, h, w: [B]."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


# --------------------------------------------------------------------------
# Autoencoder
# --------------------------------------------------------------------------


class AutoencoderKL(nn.Module):
    """KL autoencoder with the official MAR/LDM parameter layout.

    Extra keywords default to the official values; changing them only makes
    sense for small test models (the official checkpoint needs the defaults).
    """

    def __init__(
        self,
        embed_dim: int = 16,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        ckpt_path: str | os.PathLike[str] | None = None,
        *,
        ch: int = 128,
        num_res_blocks: int = 2,
        resolution: int = 256,
        encoder_attn_resolutions: Sequence[int] = (16,),
        decoder_attn_resolutions: Sequence[int] = (),
    ) -> None:
        super().__init__()
        ch_mult = tuple(ch_mult)
        self.embed_dim = embed_dim
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        common: dict[str, Any] = dict(
            ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, resolution=resolution, z_channels=embed_dim
        )
        self.encoder = Encoder(attn_resolutions=encoder_attn_resolutions, double_z=True, **common)
        self.decoder = Decoder(attn_resolutions=decoder_attn_resolutions, **common)
        self.quant_conv = conv1x1(2 * embed_dim, 2 * embed_dim)
        self.post_quant_conv = conv1x1(embed_dim, embed_dim)
        if ckpt_path is not None:
            self.load_checkpoint(ckpt_path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load an official-layout checkpoint ({"model": state_dict} or a bare
        state_dict) strictly; mismatches raise ValueError listing them."""
        blob = read_checkpoint(path)
        if not isinstance(blob, Mapping):
            raise ValueError(f"VAE checkpoint {path} does not hold a state dict (got {type(blob).__name__})")
        load_strict(self, pick_state_dict(blob, "model" if "model" in blob else None))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x: [B, 3, H, W] in [-1, 1] -> posterior over [B, embed_dim, H/f, W/f]."""
        moments = self.quant_conv(self.encoder(x))  # [B, 2*embed_dim, h, w]
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, embed_dim, h, w] -> [B, 3, h*f, w*f]."""
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
