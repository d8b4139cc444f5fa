"""The LDM "VQ-16" tokenizer (the VQ-GAN of the paper's Table 1 cross-entropy rows), loaded
strictly from a user's file.

LDM's `models/first_stage_models/vq-f16/config.yaml` describes it: `ldm.models.autoencoder.
VQModel` with embed_dim 8, n_embed 16384 and ddconfig (double_z false, z_channels 8,
resolution 256, in/out channels 3, ch 128, ch_mult 1,1,2,2,4, num_res_blocks 2,
attn_resolutions [16], dropout 0). Its state dict holds

    encoder.*          the LDM Encoder (the KL-16 encoder's layout, z_channels outputs: no double_z)
    decoder.*          the LDM Decoder, with attention at resolution 16
    quant_conv.*       1x1, z_channels -> embed_dim
    quantize.embedding.weight   [n_embed, embed_dim]
    post_quant_conv.*  1x1, embed_dim -> z_channels
    loss.*             the training losses (LPIPS, discriminator): ignored here

in a Lightning checkpoint ({"state_dict": ...}). The encoder and decoder are
`models.vae`'s, which already match LDM's keys for KL-16. No file is downloaded: the
user passes the path (`--vq-ckpt vq-f16.ckpt`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from .checkpoints import load_strict, pick_state_dict, read_checkpoint
from .vae import Decoder, Encoder, conv1x1
from .vq import VectorQuantizer, VQAutoencoder

IGNORED_PREFIXES = ("loss.",)  # training-only parts of an LDM VQModel checkpoint
VQ_F16: dict[str, Any] = dict(
    embed_dim=8,
    n_embed=16384,
    z_channels=8,
    resolution=256,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=(1, 1, 2, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(16,),
)


class LDMVQModel(VQAutoencoder):
    """LDM's VQModel (inference parts), by default the vq-f16 configuration."""

    def __init__(
        self,
        embed_dim: int = VQ_F16["embed_dim"],
        n_embed: int = VQ_F16["n_embed"],
        *,
        z_channels: int = VQ_F16["z_channels"],
        resolution: int = VQ_F16["resolution"],
        in_channels: int = VQ_F16["in_channels"],
        out_ch: int = VQ_F16["out_ch"],
        ch: int = VQ_F16["ch"],
        ch_mult: Sequence[int] = VQ_F16["ch_mult"],
        num_res_blocks: int = VQ_F16["num_res_blocks"],
        attn_resolutions: Sequence[int] = VQ_F16["attn_resolutions"],
    ) -> None:
        super().__init__()
        ch_mult = tuple(ch_mult)
        common: dict[str, Any] = dict(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            resolution=resolution,
            z_channels=z_channels,
        )
        self.encoder = Encoder(in_channels=in_channels, double_z=False, **common)
        self.decoder = Decoder(out_ch=out_ch, **common)
        self.quant_conv = conv1x1(z_channels, embed_dim)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.post_quant_conv = conv1x1(embed_dim, z_channels)
        self.stride, self.image_channels = 2 ** (len(ch_mult) - 1), in_channels

    def load_checkpoint(self, path: str | os.PathLike) -> LDMVQModel:
        """Load an LDM VQModel checkpoint strictly ({"state_dict": ...}, {"model": ...} or a bare
        state dict); the `loss.*` entries of training are skipped, anything else must match."""
        self.load_state(read_ldm_state(path))
        return self

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_strict(self, {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)})


def read_ldm_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of an LDM checkpoint file (Lightning's "state_dict" entry when present)."""
    try:
        ckpt = read_checkpoint(path)
    except ValueError as e:
        raise ValueError(
            f"{e}. An LDM/Lightning checkpoint that pickles objects besides tensors cannot be read without "
            "running its pickle code; re-save its weights once, where you trust the file: torch.save({'state_dict': "
            "torch.load(path, weights_only=False)['state_dict']}, 'vq-f16-weights.ckpt')"
        ) from e
    if isinstance(ckpt.get("state_dict"), Mapping):
        return pick_state_dict(ckpt, "state_dict")
    return pick_state_dict(ckpt)
