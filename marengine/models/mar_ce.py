"""MAR with cross-entropy: MAR's bidirectional backbone over a VQ tokenizer's codes (the MAR
rows of the paper's Table 1 under cross-entropy).

Each code is embedded by a learned table (`code_embed`, `vae_embed_dim` wide), which is
the token MAR's backbone reads through its usual `z_proj`; the Diffusion-Loss head is
replaced by a cross-entropy head (`ce_head`) over the codebook. Training masks and
orders exactly as MAR; sampling runs MAR's loop (cosine schedule, random order, several
tokens per step) with temperature sampling of the codes and CFG on the logits.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from ..checks import check_sampling
from ..config import ARCH_MAR_CE, SAMPLE_DEFAULTS, MARCEConfig
from ..schedules import CFG_SCHEDULES, cfg_at, next_mask_len
from ..utils import check_generator, check_tensor
from .ce_head import CEHead
from .mar import MAR
from .masking import mask_by_order, random_orders


class MARCE(MAR):
    architecture = ARCH_MAR_CE
    loss = "ce"
    sampling_knobs = ()  # no diffusion head, and the backbone reuse is written for MAR's head

    def __init__(self, codebook_size: int = 16384, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = MARCEConfig(**self.config.to_dict(), codebook_size=codebook_size)  # checks patch_size == 1
        del self.diffloss  # built by MAR; this member's head is the cross-entropy one
        self.codebook_size = codebook_size
        self.code_embed = nn.Embedding(codebook_size, self.token_embed_dim)
        nn.init.normal_(self.code_embed.weight, std=0.02)
        self.ce_head = CEHead(self.config.decoder_embed_dim, codebook_size)
        nn.init.xavier_uniform_(self.ce_head.linear.weight)
        nn.init.zeros_(self.ce_head.linear.bias)

    @classmethod
    def from_config(cls, cfg: MARCEConfig | dict[str, Any]) -> MARCE:
        cfg = cfg if isinstance(cfg, MARCEConfig) else MARCEConfig.from_dict(cfg)
        return cls(**cfg.to_dict())

    def check_codes(self, codes: Any) -> torch.Tensor:
        """codes [B, h, w] (integers in [0, codebook_size)) -> [B, L] int64."""
        codes = check_tensor("codes (a VQ tokenizer's indices)", codes, (None, self.seq_h, self.seq_w), floating=False)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must be in [0, {self.codebook_size}) (the codebook size), "
                f"got [{int(codes.min())}, {int(codes.max())}]"
            )
        return codes.reshape(codes.shape[0], self.seq_len).long()

    def forward(
        self, imgs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training loss: cross-entropy of the masked codes, for codes imgs [B, h, w] and labels [B]."""
        check_generator(generator)
        self.check_weights()
        codes = self.check_codes(imgs)  # [B, L]
        if codes.shape[0] == 0:
            raise ValueError("the training batch is empty: imgs has 0 rows")
        self._check_labels(labels, codes.shape[0])
        x = self.code_embed(codes)  # [B, L, C]
        orders = self.sample_orders(x.shape[0], generator)
        mask = self.random_masking(x, orders, generator)
        z = self.forward_mae_decoder(self.forward_mae_encoder(x, mask, self.class_emb(labels), generator), mask)
        bsz, seq_len, dim = z.shape
        return self.ce_head.loss(z.reshape(bsz * seq_len, dim), codes.reshape(-1), mask.reshape(-1))

    @torch.no_grad()
    def sample_tokens(
        self,
        bsz: int,
        num_iter: int = SAMPLE_DEFAULTS.num_iter,
        cfg: float = SAMPLE_DEFAULTS.cfg,
        cfg_schedule: str = SAMPLE_DEFAULTS.cfg_schedule,
        labels: torch.Tensor | None = None,
        temperature: float = SAMPLE_DEFAULTS.temperature,
        progress: bool = False,
        *,
        generator: torch.Generator | None = None,
        backend: str = "auto",
        backbone: Callable | None = None,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """Codes [bsz, h, w] in `num_iter` masked-autoregressive steps (MAR's signature; backend and
        clip_denoised concern the diffusion head and are ignored here)."""
        return sample_codes(
            self, bsz, num_iter, cfg, cfg_schedule, labels, temperature, progress, generator, backbone or self.backbone
        )


def sample_codes(
    model: MARCE,
    bsz: int,
    num_iter: int,
    cfg: float,
    cfg_schedule: str,
    labels: torch.Tensor | None,
    temperature: float,
    progress: bool,
    generator: torch.Generator | None,
    backbone: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """MAR's loop over codes: each step predicts the positions the cosine schedule releases."""
    model.check_weights()
    check_generator(generator)
    bsz, num_iter, cfg, cfg_schedule, temperature = check_sampling(
        model.seq_len, bsz, num_iter, cfg, cfg_schedule, temperature, CFG_SCHEDULES
    )
    if labels is not None:
        model._check_labels(labels, bsz)
    device, seq_len = model.fake_latent.device, model.seq_len
    codes = torch.zeros(bsz, seq_len, dtype=torch.long, device=device)
    tokens = torch.zeros(bsz, seq_len, model.token_embed_dim, device=device)
    mask = torch.ones(bsz, seq_len, dtype=torch.bool, device=device)
    orders = random_orders(bsz, seq_len, generator, device)
    guided = cfg != 1.0
    null = model.fake_latent.expand(bsz, -1)
    class_embedding = model.class_emb(labels.to(device)) if labels is not None else null
    if guided:
        class_embedding = torch.cat([class_embedding, null])
    steps = range(num_iter)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sampling")
    num_masked = seq_len
    for step in steps:
        known_idx = model.known_indices(mask)  # [B, K]
        x_in, idx_in = (tokens, known_idx)
        if guided:
            x_in, idx_in = torch.cat([tokens, tokens]), torch.cat([known_idx, known_idx])
        z = backbone(x_in.to(class_embedding.dtype), idx_in, class_embedding)  # [B(x2), L, D]
        mask_len = next_mask_len(step, num_iter, seq_len, num_masked)
        mask_next = mask_by_order(mask_len, orders)
        to_pred = mask if step >= num_iter - 1 else mask & ~mask_next  # [B, L]
        pred_idx = to_pred.nonzero(as_tuple=True)
        zs = z[:bsz][pred_idx]  # [P, D]
        scale = cfg_at(cfg, cfg_schedule, seq_len, mask_len)
        if guided and scale != 1.0:
            zs = torch.cat([zs, z[bsz:][pred_idx]])
        else:
            scale = 1.0
        new = model.ce_head.sample(zs, temperature, scale, generator=generator)  # [P]
        codes[pred_idx] = new
        tokens = tokens.clone()
        tokens[pred_idx] = model.code_embed(new).to(tokens.dtype)
        mask, num_masked = mask_next, mask_len
    return codes.reshape(bsz, model.seq_h, model.seq_w)
