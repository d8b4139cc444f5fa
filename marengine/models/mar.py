"""MAR: the MAE-style ViT backbone with Diffusion Loss (official arguments,
parameter names and method signatures).

The encoder sees the known tokens plus `buffer_size` buffer tokens carrying the
class embedding; the decoder fills unknown positions with a learned mask token
and returns z for every position. Dropping uses the indices of the known
positions (`known_idx`), so the same code runs eagerly and exports to ONNX.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..config import ARCH_MAR, LAYERNORM_EPS, SAMPLE_DEFAULTS, MARConfig
from ..diffusion.samplers import HeadSampler
from ..schedules import TokenSteps
from ..utils import check_generator, check_tensor, rand
from . import masked_ar
from .contract import MemberMixin
from .diffloss import DiffLoss
from .layers import Block, KVHook, default_norm, init_linear_and_norm, patchify, unpatchify
from .masking import random_orders, sample_mask_ratio
from .sample_args import SampleArgs

LayerHooks = Callable[[int], KVHook]  # layer index -> the attention hook of that block


class MAR(nn.Module, MemberMixin):
    # the family contract (models/contract.py)
    architecture = ARCH_MAR
    config_class: type = MARConfig
    causal = False  # several tokens per iteration, in a random order
    loss: str = "diffusion"  # the head: "diffusion" (Diffusion Loss) or "ce" (MAR-CE)
    # what sample_tokens takes (contract.SAMPLING_KNOBS; the speed knobs of config.SamplingPreset among them)
    sampling_knobs: tuple[str, ...] = (
        "cfg",
        "temperature",
        "sampler",
        "steps",
        "cache",
        "order",
        "token_steps",
        "editing",
    )
    export_parts: tuple[str, ...] = ("backbone", "backbone_embed", "head", "decoder", "encoder")  # export.onnx
    sampling_loop = staticmethod(masked_ar.sample_tokens)  # what sample_tokens runs: the masked loop
    default_num_iter: int | None = SAMPLE_DEFAULTS.num_iter  # the official 64

    def __init__(
        self,
        img_size: int = 256,
        vae_stride: int = 16,
        patch_size: int = 1,
        encoder_embed_dim: int = 1024,
        encoder_depth: int = 16,
        encoder_num_heads: int = 16,
        decoder_embed_dim: int = 1024,
        decoder_depth: int = 16,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: Callable[[int], nn.Module] | None = None,
        vae_embed_dim: int = 16,
        mask_ratio_min: float = 0.7,
        label_drop_prob: float = 0.1,
        class_num: int = 1000,
        attn_dropout: float = 0.1,
        proj_dropout: float = 0.1,
        buffer_size: int = 64,
        diffloss_d: int = 3,
        diffloss_w: int = 1024,
        num_sampling_steps: str = "100",
        diffusion_batch_mul: int = 4,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if img_size % (vae_stride * patch_size):
            raise ValueError(
                f"img_size {img_size} is not divisible by vae_stride*patch_size = "
                f"{vae_stride * patch_size}: the image does not split into tokens"
            )
        if not 0.0 <= mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must be in [0, 1], got {mask_ratio_min}")
        self.config = MARConfig(
            img_size=img_size,
            vae_stride=vae_stride,
            patch_size=patch_size,
            encoder_embed_dim=encoder_embed_dim,
            encoder_depth=encoder_depth,
            encoder_num_heads=encoder_num_heads,
            decoder_embed_dim=decoder_embed_dim,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            vae_embed_dim=vae_embed_dim,
            mask_ratio_min=mask_ratio_min,
            label_drop_prob=label_drop_prob,
            class_num=class_num,
            attn_dropout=attn_dropout,
            proj_dropout=proj_dropout,
            buffer_size=buffer_size,
            diffloss_d=diffloss_d,
            diffloss_w=diffloss_w,
            num_sampling_steps=str(num_sampling_steps),
            diffusion_batch_mul=diffusion_batch_mul,
            grad_checkpointing=grad_checkpointing,
        )
        self.vae_embed_dim = vae_embed_dim
        self.img_size, self.vae_stride, self.patch_size = img_size, vae_stride, patch_size
        self.seq_h = self.seq_w = img_size // vae_stride // patch_size
        self.seq_len = self.seq_h * self.seq_w
        self.token_embed_dim = vae_embed_dim * patch_size**2
        self.num_classes = class_num
        self.label_drop_prob = label_drop_prob
        self.mask_ratio_min = mask_ratio_min
        self.buffer_size = buffer_size
        self.diffusion_batch_mul = diffusion_batch_mul
        self.grad_checkpointing = grad_checkpointing
        total = self.seq_len + buffer_size
        enc, dec = encoder_embed_dim, decoder_embed_dim

        self.class_emb = nn.Embedding(class_num, enc)
        self.fake_latent = nn.Parameter(torch.zeros(1, enc))  # the null class of CFG
        self.z_proj = nn.Linear(self.token_embed_dim, enc)
        self.z_proj_ln = nn.LayerNorm(enc, eps=LAYERNORM_EPS)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, total, enc))
        self.encoder_blocks = nn.ModuleList(
            [
                Block(enc, encoder_num_heads, mlp_ratio, True, proj_dropout, attn_dropout, norm_layer)
                for _ in range(encoder_depth)
            ]
        )
        self.encoder_norm = (norm_layer or default_norm)(enc)

        self.decoder_embed = nn.Linear(enc, dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, total, dec))
        self.decoder_blocks = nn.ModuleList(
            [
                Block(dec, decoder_num_heads, mlp_ratio, True, proj_dropout, attn_dropout, norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = (norm_layer or default_norm)(dec)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, dec))
        self.initialize_weights()

        if self.loss == "diffusion":  # a member with another head (MAR-CE) builds its own
            self.diffloss = DiffLoss(
                self.token_embed_dim, dec, diffloss_d, diffloss_w, num_sampling_steps, grad_checkpointing
            )

    def initialize_weights(self) -> None:
        """Official init: N(0, 0.02) embeddings, xavier Linear with zero bias, unit LayerNorm."""
        for p in (
            self.class_emb.weight,
            self.fake_latent,
            self.mask_token,
            self.encoder_pos_embed_learned,
            self.decoder_pos_embed_learned,
            self.diffusion_pos_embed_learned,
        ):
            nn.init.normal_(p, std=0.02)
        init_linear_and_norm(self)

    # ---------------------------------------------------------------- tokens
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)(W/p), C p p]."""
        return patchify(x, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C p p] -> [B, C, seq_h p, seq_w p]."""
        return unpatchify(x, self.patch_size, self.vae_embed_dim, self.seq_h, self.seq_w)

    def sample_orders(self, bsz: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_orders(bsz, self.seq_len, generator, self.fake_latent.device)

    def random_masking(
        self, x: torch.Tensor, orders: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """[B, L] float mask (1 = masked) hiding ceil(L r) tokens, r ~ truncated normal on [min, 1]."""
        bsz, seq_len, _ = x.shape
        n = math.ceil(seq_len * sample_mask_ratio(self.mask_ratio_min, generator))
        mask = torch.zeros(bsz, seq_len, device=x.device)
        return mask.scatter(1, orders[:, :n], 1.0)

    # ---------------------------------------------------------------- backbone
    def known_indices(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, L] mask (nonzero = unknown) -> [B, K] sorted indices of the known positions."""
        if mask.ndim != 2 or mask.shape[1] != self.seq_len:
            raise ValueError(f"mask must be [batch, {self.seq_len}], got shape {tuple(mask.shape)}")
        known = mask == 0
        k = known.sum(1)
        if k.numel() and bool((k != k[0]).any()):
            raise ValueError(
                f"every row of the mask must hide the same number of tokens, got "
                f"{sorted(set((self.seq_len - k).tolist()))} hidden per row"
            )
        kk = int(k[0]) if k.numel() else 0
        return known.nonzero()[:, 1].reshape(mask.shape[0], kk)

    def _with_buffer(self, known_idx: torch.Tensor) -> torch.Tensor:
        buf = torch.arange(self.buffer_size, device=known_idx.device, dtype=known_idx.dtype)
        return torch.cat([buf.expand(known_idx.shape[0], -1), known_idx + self.buffer_size], dim=1)

    def _blocks(self, blocks: nn.ModuleList, x: torch.Tensor, kv: LayerHooks | None = None) -> torch.Tensor:
        for layer, blk in enumerate(blocks):
            if kv is not None:
                x = blk(x, kv=kv(layer))
            elif self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def encode_known(
        self, x: torch.Tensor, known_idx: torch.Tensor, class_embedding: torch.Tensor, kv: LayerHooks | None = None
    ) -> torch.Tensor:
        """tokens [B, L, C], known_idx [B, K], class_embedding [B, D] -> [B, buffer + K, D].
        kv(layer): the attention hook of each encoder block (backbone reuse records K/V with it)."""
        x = self.z_proj(x)
        bsz, _, dim = x.shape
        buf = class_embedding.to(x.dtype).unsqueeze(1).expand(bsz, self.buffer_size, dim)
        x = torch.cat([buf, x], dim=1) + self.encoder_pos_embed_learned
        x = self.z_proj_ln(x)
        idx = self._with_buffer(known_idx)
        x = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, dim))
        return self.encoder_norm(self._blocks(self.encoder_blocks, x, kv))

    def decode_known(self, x: torch.Tensor, known_idx: torch.Tensor, kv: LayerHooks | None = None) -> torch.Tensor:
        """encoder output [B, buffer + K, D] -> z [B, L, D_dec]; kv(layer) as encode_known's."""
        x = self.decoder_embed(x)
        bsz, _, dim = x.shape
        full = self.mask_token.to(x.dtype).expand(bsz, self.seq_len + self.buffer_size, dim)
        idx = self._with_buffer(known_idx)
        x = full.scatter(1, idx.unsqueeze(-1).expand(-1, -1, dim), x) + self.decoder_pos_embed_learned
        x = self.decoder_norm(self._blocks(self.decoder_blocks, x, kv))
        return x[:, self.buffer_size :] + self.diffusion_pos_embed_learned

    def backbone(
        self,
        tokens: torch.Tensor,
        known_idx: torch.Tensor,
        class_embedding: torch.Tensor,
        kv: tuple[LayerHooks, LayerHooks] | None = None,
    ) -> torch.Tensor:
        """z [B, L, D] for tokens [B, L, C] whose known positions are known_idx [B, K]; kv: the
        (encoder, decoder) attention hooks per layer (models.backbone_cache records K/V so)."""
        enc, dec = kv if kv is not None else (None, None)
        return self.decode_known(self.encode_known(tokens, known_idx, class_embedding, enc), known_idx, dec)

    def forward_mae_encoder(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        class_embedding: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Official form: x [B, L, C], mask [B, L] (1 = unknown). Drops the class
        embedding (-> null class) with probability label_drop_prob in training."""
        self._check_tokens(x)
        if self.training and self.label_drop_prob > 0:
            drop = (rand((x.shape[0],), generator, x.device) < self.label_drop_prob).unsqueeze(-1).to(x.dtype)
            class_embedding = drop * self.fake_latent + (1 - drop) * class_embedding
        return self.encode_known(x, self.known_indices(mask), class_embedding)

    def forward_mae_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.decode_known(x, self.known_indices(mask))

    # ---------------------------------------------------------------- training
    def forward_loss(
        self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        bsz, seq_len, _ = target.shape
        mul = self.diffusion_batch_mul
        target = target.reshape(bsz * seq_len, -1).repeat(mul, 1)
        z = z.reshape(bsz * seq_len, -1).repeat(mul, 1)
        mask = mask.reshape(bsz * seq_len).repeat(mul)
        return self.diffloss(z=z, target=target, mask=mask, generator=generator)

    def forward(
        self, imgs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training loss for latents imgs [B, C, h, w] and class labels [B]."""
        side = self.seq_h * self.patch_size
        imgs = check_tensor("imgs (latents)", imgs, (None, self.vae_embed_dim, side, side), floating=True)
        if imgs.shape[0] == 0:
            raise ValueError("the training batch is empty: imgs has 0 rows")
        check_generator(generator)
        self.check_weights()
        self._check_labels(labels, imgs.shape[0])
        class_embedding = self.class_emb(labels)
        x = self.patchify(imgs)
        self._check_tokens(x)
        target = x.detach()
        orders = self.sample_orders(x.shape[0], generator)
        mask = self.random_masking(x, orders, generator)
        z = self.forward_mae_decoder(self.forward_mae_encoder(x, mask, class_embedding, generator), mask)
        return self.forward_loss(z=z, target=target, mask=mask, generator=generator)

    # ---------------------------------------------------------------- sampling
    def token_sampler(
        self, args: SampleArgs, sampler: str | HeadSampler | None, steps: Any, token_steps: TokenSteps | None = None
    ) -> masked_ar.TokenSampler:
        """The head of the masked loop: Diffusion Loss's reverse diffusion per token, with
        `sampler` (default DDPM), the per-iteration `steps` the loop's plan carries and, with
        `token_steps`, steps of each token's own."""
        grid = (self.seq_h, self.seq_w)
        return masked_ar.DiffusionTokens(self.diffloss, args, sampler, self.unpatchify, token_steps, grid)

    # ---------------------------------------------------------------- checks
    def _check_tokens(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.token_embed_dim:
            raise ValueError(
                f"tokens must be [batch, {self.seq_len}, {self.token_embed_dim}] "
                f"(latents [batch, {self.vae_embed_dim}, {self.seq_h * self.patch_size}, "
                f"{self.seq_w * self.patch_size}]), got shape {tuple(x.shape)}"
            )


def _build(preset: str, **kwargs: Any) -> MAR:
    return MAR.from_config(MARConfig.from_name(preset, **kwargs))


def mar_base(**kwargs: Any) -> MAR:
    """MAR-B (208M with its 6x1024 head, as released)."""
    return _build("mar_base", **kwargs)


def mar_large(**kwargs: Any) -> MAR:
    """MAR-L (479M with its 8x1280 head, as released)."""
    return _build("mar_large", **kwargs)


def mar_huge(**kwargs: Any) -> MAR:
    """MAR-H (943M with its 12x1536 head, as released)."""
    return _build("mar_huge", **kwargs)


MODELS: dict[str, Callable[..., MAR]] = {"mar_base": mar_base, "mar_large": mar_large, "mar_huge": mar_huge}
