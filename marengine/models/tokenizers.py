"""Tokenizers: images <-> the latent grids MAR models.

Both share one interface: `encode(imgs [B, 3|1, H, W] in [-1, 1])` returns a
posterior with `sample(generator)` and `mode()` giving latents already scaled
for MAR, `decode(latents)` returns images in [-1, 1]; `embed_dim` and `stride`
give the latent channels and the downsampling factor (MAR's `vae_embed_dim`
and `vae_stride`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import file_field
from ..config import VAE_LATENT_SCALE, MARConfig
from ..limits import MAX_CHANNELS, MAX_CODEBOOK, MAX_STRIDE
from .contract import tokenizer_kind_of
from .ldm_vq import LDMVQModel
from .vae import AutoencoderKL, DiagonalGaussian
from .vq import DigitsVQ, VQTokenizer


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
    if not bool(torch.isfinite(imgs).all()):
        raise ValueError(
            "the tokenizer decoded non-finite pixels (NaN or inf): the latents were out of its range "
            "(lower cfg or temperature) or its weights are broken"
        )
    x = ((imgs.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------- the tokenizer factory
# A tokenizer is described by a small JSON-able spec (kept in training checkpoints and
# in a pretrained folder's tokenizer.json):
#   {"kind": "pixel", "channels": 1|3, "stride": s}
#   {"kind": "vae", "embed_dim": 16, "ckpt": "kl16.ckpt" | None}
#   {"kind": "vq", "codebook_size": K, "stride": s, "ckpt": a DigitsVQ folder | an LDM VQ-16 file | None}
TOKENIZER_KINDS = ("pixel", "vae", "vq")


def models_codes(cfg: Any) -> bool:
    """True for the configurations of the members that model VQ codes (their loss is
    cross-entropy; contract.MemberConfig's `loss`)."""
    return tokenizer_kind_of(cfg.loss) == "codes"


def pixel_channels(cfg: MARConfig) -> int | None:
    """Image channels of a pixel tokenizer that fits `cfg` (1 or 3), or None when none does."""
    channels, rem = divmod(cfg.vae_embed_dim, cfg.vae_stride**2)
    return channels if rem == 0 and channels in (1, 3) else None


def tokenizer_spec(kind: str, cfg: MARConfig, vae_ckpt: str | None = None) -> dict[str, Any]:
    """The spec of a `kind` tokenizer for a model configured by `cfg`; checks that they fit.
    For kind "vq" the third argument is the VQ tokenizer's weights (folder or LDM file)."""
    if kind == "vq" or models_codes(cfg):
        return vq_tokenizer_spec(kind, cfg, vae_ckpt)
    if kind == "pixel":
        channels = pixel_channels(cfg)
        if channels is None:
            raise ValueError(
                f"the pixel tokenizer needs vae_embed_dim = channels * vae_stride^2 with 1 or 3 channels; "
                f"got vae_embed_dim={cfg.vae_embed_dim}, vae_stride={cfg.vae_stride}"
            )
        return {"kind": "pixel", "channels": channels, "stride": cfg.vae_stride}
    if kind == "vae":
        if cfg.vae_stride != 16:
            raise ValueError(f"the KL-16 VAE has stride 16, the model config says vae_stride={cfg.vae_stride}")
        return {"kind": "vae", "ckpt": None if vae_ckpt is None else str(vae_ckpt), "embed_dim": cfg.vae_embed_dim}
    raise ValueError(f"tokenizer must be one of {TOKENIZER_KINDS}, got {kind!r}")


def vq_tokenizer_spec(kind: str, cfg: Any, ckpt: str | None) -> dict[str, Any]:
    """The spec of the VQ tokenizer of a cross-entropy member (a clear error for any other pairing)."""
    if kind != "vq":
        raise ValueError(
            f"a cross-entropy model predicts the codes of a VQ tokenizer, not {kind!r} tokens: use "
            "--tokenizer vq --vq-ckpt <a folder from `marengine train-vq`, or LDM's VQ-16 checkpoint>"
        )
    if not models_codes(cfg):
        raise ValueError(
            "the VQ tokenizer gives codes, which only the cross-entropy members model (--loss ce); "
            "Diffusion Loss models continuous tokens: use --tokenizer pixel or vae"
        )
    return {
        "kind": "vq",
        "ckpt": None if ckpt is None else str(ckpt),
        "codebook_size": cfg.codebook_size,
        "stride": cfg.vae_stride,
    }


def default_tokenizer_spec(cfg: MARConfig, vae_ckpt: str | None = None) -> dict[str, Any] | None:
    """The KL-16 VAE when its weights are given (or the model has 16-channel stride-16
    latents), else the pixel tokenizer when the latents fit it, else None. Cross-entropy
    models: the VQ tokenizer (whose weights must then be given)."""
    if models_codes(cfg):
        return vq_tokenizer_spec("vq", cfg, None)
    if vae_ckpt is not None or (cfg.vae_stride == 16 and pixel_channels(cfg) is None):
        return tokenizer_spec("vae", cfg, vae_ckpt)
    return tokenizer_spec("pixel", cfg) if pixel_channels(cfg) is not None else None


# the integer fields of each kind of spec, with their caps
_SPEC_FIELDS = {
    "pixel": {"channels": MAX_CHANNELS, "stride": MAX_STRIDE},
    "vae": {"embed_dim": MAX_CHANNELS},
    "vq": {"codebook_size": MAX_CODEBOOK, "stride": MAX_STRIDE},
}


def check_spec(spec: Any, cfg: Any = None, source: str = "the tokenizer spec") -> dict[str, Any]:
    """A tokenizer spec read from a file (`source`: tokenizer.json, a checkpoint), checked: its kind,
    its sizes (positive, capped) and, given the model configuration `cfg`, that its channels and
    stride fit the model (else the images would come out of the wrong shape)."""
    if not isinstance(spec, dict) or spec.get("kind") not in TOKENIZER_KINDS:
        got = repr(spec)[:120]
        raise ValueError(f'{source} must hold a tokenizer spec with "kind" one of {TOKENIZER_KINDS}, got {got}')
    kind = spec["kind"]
    for field, cap in _SPEC_FIELDS[kind].items():
        if field in spec or kind != "vq":
            file_field(source, spec, field, lo=1, hi=cap)
    if spec.get("ckpt") is not None and not isinstance(spec["ckpt"], str):
        raise ValueError(f"{source}: field 'ckpt' must be a path or null, got {spec['ckpt']!r}")
    if kind == "pixel" and spec["channels"] not in (1, 3):
        raise ValueError(f"{source}: field 'channels' must be 1 (grayscale) or 3 (RGB), got {spec['channels']}")
    if cfg is None:
        return spec
    if models_codes(cfg) != (kind == "vq"):
        want = "a VQ tokenizer (codes)" if models_codes(cfg) else "continuous tokens (pixel or vae)"
        raise ValueError(f"{source} describes a {kind!r} tokenizer, but the model needs {want}")
    if kind == "pixel":
        said = {"vae_embed_dim": spec["channels"] * spec["stride"] ** 2, "vae_stride": spec["stride"]}
    elif kind == "vae":
        said = {"vae_embed_dim": spec["embed_dim"], "vae_stride": 16}
    else:
        said = {
            "codebook_size": spec.get("codebook_size", cfg.codebook_size),
            "vae_stride": spec.get("stride", cfg.vae_stride),
        }
    wrong = [f"{k} {v} (model: {getattr(cfg, k)})" for k, v in said.items() if v != getattr(cfg, k)]
    if wrong:
        raise ValueError(
            f"{source} does not fit the model: its {kind} tokenizer gives {', '.join(wrong)}; "
            "the channels and stride of the tokenizer must be the model's vae_embed_dim and vae_stride"
        )
    return spec


def with_vae_ckpt(spec: dict[str, Any] | None, vae_ckpt: str | None) -> dict[str, Any] | None:
    """`spec` with the VAE weights path replaced when one is given (files move between machines)."""
    if spec is not None and spec.get("kind") == "vae" and vae_ckpt is not None:
        return {**spec, "ckpt": str(vae_ckpt)}
    return spec


def build_tokenizer(spec: dict[str, Any]) -> nn.Module:
    """The tokenizer a spec describes (in eval mode)."""
    check_spec(spec)
    if spec["kind"] == "pixel":
        return PixelTokenizer(int(spec["channels"]), int(spec["stride"])).eval()
    if spec["kind"] == "vq":
        return build_vq_tokenizer(spec)
    if not spec.get("ckpt"):
        raise ValueError("the VAE tokenizer needs its weights: pass --vae-ckpt path/to/kl16.ckpt")
    return VAETokenizer(AutoencoderKL(embed_dim=int(spec["embed_dim"]), ckpt_path=spec["ckpt"])).eval()


def describe_tokenizer(tokenizer: nn.Module, cfg: MARConfig | None = None) -> dict[str, Any]:
    """What a deployment needs to know of a tokenizer: kind, latent scale, image channels,
    latent channels and stride (checked against the model configuration `cfg` if given)."""
    if isinstance(tokenizer, PixelTokenizer):
        info = {"kind": "pixel", "latent_scale": 1.0, "image_channels": tokenizer.channels}
    elif isinstance(tokenizer, VAETokenizer):
        info = {"kind": "vae", "latent_scale": float(tokenizer.scale), "image_channels": 3}
    else:
        raise TypeError(f"tokenizer must be a PixelTokenizer or a VAETokenizer, got {type(tokenizer).__name__}")
    if cfg is not None and (tokenizer.embed_dim != cfg.vae_embed_dim or tokenizer.stride != cfg.vae_stride):
        raise ValueError(
            f"tokenizer (embed_dim {tokenizer.embed_dim}, stride {tokenizer.stride}) does not match "
            f"the model (vae_embed_dim {cfg.vae_embed_dim}, vae_stride {cfg.vae_stride})"
        )
    return {**info, "embed_dim": tokenizer.embed_dim, "stride": tokenizer.stride}


def build_vq_tokenizer(spec: dict[str, Any]) -> VQTokenizer:
    """The VQ tokenizer of a spec: a `DigitsVQ` pretrained folder, or an LDM VQ-16 checkpoint file;
    its codebook size and stride must be the model's."""
    ckpt = spec.get("ckpt")
    if not ckpt:
        raise ValueError(
            "the VQ tokenizer needs its weights: pass --vq-ckpt <folder> (train one on the digits with "
            "`marengine train-vq --out runs/vq`) or LDM's VQ-16 checkpoint file"
        )
    path = Path(ckpt)
    if path.is_dir():
        vq: Any = DigitsVQ.from_pretrained(path)
    elif path.is_file():
        vq = LDMVQModel().load_checkpoint(path)
    else:
        raise FileNotFoundError(f"VQ tokenizer weights {path} not found (a folder from train-vq, or an LDM .ckpt)")
    tok = VQTokenizer(vq.eval()).eval()
    want = (int(spec.get("codebook_size", tok.codebook_size)), int(spec.get("stride", tok.stride)))
    if (tok.codebook_size, tok.stride) != want:
        raise ValueError(
            f"the VQ tokenizer {path} has {tok.codebook_size} codes and stride {tok.stride}; the model expects "
            f"{want[0]} codes and stride {want[1]} (set model_overrides codebook_size / vae_stride to fit)"
        )
    return tok
