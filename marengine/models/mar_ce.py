"""MAR with cross-entropy: MAR's bidirectional backbone over a VQ tokenizer's codes (the MAR
rows of the paper's Table 1 under cross-entropy).

Each code is embedded by a learned table (`code_embed`, `vae_embed_dim` wide), which is
the token MAR's backbone reads through its usual `z_proj`; the Diffusion-Loss head is
replaced by a cross-entropy head (`ce_head`) over the codebook. Training masks and
orders exactly as MAR; sampling runs MAR's loop (cosine schedule, random order, several
tokens per step; masked_ar.masked_loop, so caching and editing too) with temperature sampling
of the codes and CFG on the logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..checks import check_finite_result
from ..config import ARCH_MAR_CE, MARCEConfig
from ..utils import check_generator, check_tensor
from .ce_head import CategoricalTokens, CEHead, refuse_diffusion_knobs
from .mar import MAR
from .sample_args import SampleArgs


class MARCE(MAR):
    architecture = ARCH_MAR_CE
    config_class = MARCEConfig
    loss = "ce"
    # backbone reuse, orders, editing; no diffusion head, so no head sampler or steps
    sampling_knobs = ("cfg", "temperature", "cache", "order", "editing")
    export_parts: tuple[str, ...] = ()  # the ONNX exporter deploys Diffusion-Loss MAR and the causal members

    def __init__(self, codebook_size: int = 16384, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = MARCEConfig(**self.config.to_dict(), codebook_size=codebook_size)  # checks patch_size == 1
        self.codebook_size = codebook_size
        self.code_embed = nn.Embedding(codebook_size, self.token_embed_dim)
        nn.init.normal_(self.code_embed.weight, std=0.02)
        self.ce_head = CEHead(self.config.decoder_embed_dim, codebook_size)
        nn.init.xavier_uniform_(self.ce_head.linear.weight)
        nn.init.zeros_(self.ce_head.linear.bias)

    def token_sampler(self, args: SampleArgs, sampler: Any, steps: Any, token_steps: Any = None) -> CodeTokens:
        """The head of the masked loop: tempered categorical draws of codes (args.backend and
        args.clip_denoised concern a diffusion head and are ignored)."""
        refuse_diffusion_knobs(sampler=sampler, steps=steps, token_steps=token_steps)
        return CodeTokens(self, args.temperature, args.generator)

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


class CodeTokens(CategoricalTokens):
    """MAR-CE's token sampler: the categorical draw (ce_head.CategoricalTokens); the backbone
    reads a code back through the code embedding, and editing restores the known codes."""

    def __init__(self, model: MARCE, temperature: float, generator: torch.Generator | None) -> None:
        super().__init__(model.ce_head, temperature, generator)
        self.model = model
        self.embed = model.code_embed
        self.known_codes: torch.Tensor | None = None  # [B, L], editing

    def known_inputs(self, known: torch.Tensor | None) -> torch.Tensor | None:
        """Known codes [B, h, w] or [B, L] (editing) -> their embeddings [B, L, C]; the codes are
        kept to be restored exactly at the end."""
        if known is None:
            return None
        model = self.model
        codes = known.reshape(known.shape[0], model.seq_h, model.seq_w) if known.ndim == 2 else known
        self.known_codes = model.check_codes(codes).to(model.fake_latent.device)  # [B, L]
        return self.embed(self.known_codes)  # [B, L, C]

    def finish(
        self, tokens: torch.Tensor, values: torch.Tensor | None, known_mask: torch.Tensor | None, cfg: float
    ) -> torch.Tensor:
        """The sampled codes [B, L] (the known ones restored) -> [B, h, w]."""
        check_finite_result(bool(self.finite), "logits", cfg, self.temperature)
        codes = values
        if self.known_codes is not None:
            codes = torch.where(known_mask.to(codes.device), self.known_codes, codes)
        return codes.reshape(codes.shape[0], self.model.seq_h, self.model.seq_w)
