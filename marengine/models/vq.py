"""Vector-quantised tokenizers: images <-> grids of codebook indices (the cross-entropy members).

Layout (the LDM / taming `VQModel` attribute names, so `ldm_vq.LDMVQModel` shares it):

    encode:  image --encoder--> h --quant_conv--> z [B, e, h, w] --quantize--> codes [B, h, w]
    decode:  codes --quantize.embedding--> z_q --post_quant_conv--> --decoder--> image

`VectorQuantizer` picks the nearest codebook vector; in training the straight-through
estimator passes the decoder's gradient to the encoder (z + (z_q - z).detach()) and the
codebook / commitment terms (VQ-VAE) pull codes and encoder outputs together.
`DigitsVQ` is the small tokenizer the project trains on the 8x8 digits
(`marengine.training.vq.train_vq`, `marengine train-vq`); `VQTokenizer` gives either the
tokenizer interface of `models.tokenizers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VQConfig
from ..utils import check_tensor
from .checkpoints import PretrainedMixin

COMMITMENT = 0.25  # beta of VQ-VAE (and of LDM's VectorQuantizer2)


class VectorQuantizer(nn.Module):
    """A codebook `embedding` [K, e] (LDM's key `quantize.embedding.weight`)."""

    def __init__(self, codebook_size: int, embed_dim: int, beta: float = COMMITMENT) -> None:
        super().__init__()
        self.codebook_size, self.embed_dim, self.beta = codebook_size, embed_dim, beta
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, e, h, w] -> the nearest code [B, h, w] (int64)."""
        b, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e).float()  # [N, e]
        book = self.embedding.weight.float()  # [K, e]
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)  # [N, K]
        return dist.argmin(1).reshape(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> z_q [B, e, h, w]."""
        return self.embedding(codes).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through z_q [B, e, h, w], codes [B, h, w], codebook + beta * commitment loss)."""
        codes = self.codes(z)
        zq = self.lookup(codes)
        loss = F.mse_loss(zq, z.detach()) + self.beta * F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), codes, loss


class VQAutoencoder(nn.Module):
    """encoder, quant_conv, quantize, post_quant_conv, decoder (set by subclasses)."""

    encoder: nn.Module
    decoder: nn.Module
    quantize: VectorQuantizer
    quant_conv: nn.Module
    post_quant_conv: nn.Module
    stride: int
    image_channels: int

    @property
    def codebook_size(self) -> int:
        return self.quantize.codebook_size

    def encode_codes(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs [B, c, H, W] in [-1, 1] -> codes [B, H/s, W/s] (int64)."""
        imgs = check_tensor("images", imgs, (None, self.image_channels, None, None), floating=True)
        if imgs.shape[2] % self.stride or imgs.shape[3] % self.stride:
            raise ValueError(f"image size {tuple(imgs.shape[2:])} is not divisible by the stride {self.stride}")
        return self.quantize.codes(self.quant_conv(self.encoder(imgs)))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] (integers; a float tensor holding integers is accepted) -> images [B, c, H, W]."""
        codes = check_tensor("codes", codes, (None, None, None))
        if codes.is_floating_point():
            codes = codes.round()
        codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must be in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training: (reconstruction [B, c, H, W], codes [B, h, w], quantizer loss)."""
        zq, codes, qloss = self.quantize(self.quant_conv(self.encoder(imgs)))
        return self.decoder(self.post_quant_conv(zq)), codes, qloss


def _conv(c_in: int, c_out: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=k // 2)


class DigitsVQ(VQAutoencoder, PretrainedMixin):
    """A small VQ tokenizer for small images (the 8x8 digits): stride x stride patches -> codes.

    encoder: conv3x3 -> SiLU -> conv (stride x stride, stride) -> SiLU -> conv3x3 -> SiLU -> conv1x1
    decoder: conv3x3 -> SiLU -> transposed conv (stride) -> SiLU -> conv3x3 -> SiLU -> conv3x3"""

    architecture = "vq_digits"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        cfg = self.config = VQConfig(**kwargs)
        c, h, s, e = cfg.channels, cfg.hidden, cfg.stride, cfg.embed_dim
        self.stride, self.image_channels = s, c
        act = nn.SiLU
        self.encoder = nn.Sequential(
            _conv(c, h), act(), nn.Conv2d(h, h, s, stride=s), act(), _conv(h, h), act(), _conv(h, e, 1)
        )
        self.quant_conv = nn.Conv2d(e, e, 1)
        self.quantize = VectorQuantizer(cfg.codebook_size, e)
        self.post_quant_conv = nn.Conv2d(e, e, 1)
        self.decoder = nn.Sequential(
            _conv(e, h), act(), nn.ConvTranspose2d(h, h, s, stride=s), act(), _conv(h, h), act(), _conv(h, c)
        )

    @classmethod
    def from_config(cls, cfg: VQConfig | dict[str, Any]) -> DigitsVQ:
        cfg = cfg if isinstance(cfg, VQConfig) else VQConfig.from_dict(cfg)
        return cls(**cfg.to_dict())


@dataclass
class CodePosterior:
    """The codes of a VQ encoding: sample and mode are the same (quantisation is deterministic)."""

    codes: torch.Tensor  # [B, h, w] int64

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.codes

    def mode(self) -> torch.Tensor:
        return self.codes


class VQTokenizer(nn.Module):
    """The tokenizer interface over a VQ autoencoder: encode(imgs).sample() -> codes [B, h, w],
    decode(codes) -> images in [-1, 1] (clamped)."""

    bounded = True

    def __init__(self, vq: VQAutoencoder) -> None:
        super().__init__()
        self.vq = vq
        self.stride, self.codebook_size = vq.stride, vq.codebook_size
        self.channels = vq.image_channels
        self.embed_dim = vq.quantize.embed_dim  # width of a code vector (the models embed codes themselves)

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor) -> CodePosterior:
        return CodePosterior(self.vq.encode_codes(imgs))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.decode_codes(codes).clamp(-1.0, 1.0)
