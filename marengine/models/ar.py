"""CausalAR: the paper's autoregressive baseline (Table 1), GPT-style, over continuous tokens
with Diffusion Loss or over VQ codes with cross-entropy.

Sequence layout (L tokens, generated in `order`: o_0, ..., o_{L-1}):

    index      0                  1                         ...  L-1
    input      class embedding    token at o_0              ...  token at o_{L-2}
               (null class: CFG)  + pos[o_0]                     + pos[o_{L-2}]
    + next     tpos[o_0]          tpos[o_1]                 ...  tpos[o_{L-1}]
    output z   predicts o_0       predicts o_1              ...  predicts o_{L-1}

The input is shifted by one token (the class token) and attention is causal
(triangular mask), so output i sees the class and the first i tokens. `pos` embeds the
image position of the token an input carries; `tpos` embeds the position of the NEXT
token, the one output i predicts: in random order this is how the model knows which
position to predict (the paper, section 3.3: positional embedding of the unshuffled
positions, as MAE's decoder does). In raster order o_i = i and `tpos` is redundant but
kept, so the two orders differ only in the order. As MAR adds
`diffusion_pos_embed_learned` before its head, z gets `head_pos[o_i]` too.

The layers (`layers.Block`), the Diffusion-Loss head, the checkpoints and checks (contract.MemberMixin)
and the training contract (`forward(imgs, labels, generator) -> loss`) are MAR's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..config import ARCH_AR, LAYERNORM_EPS, ARConfig
from ..diffusion.samplers import HeadSampler
from ..utils import check_generator, check_tensor, rand
from . import ar_sampling
from .ce_head import CategoricalTokens, CEHead, refuse_diffusion_knobs
from .contract import MemberMixin
from .diffloss import DiffLoss
from .kv_cache import KVCache, blocks_step
from .layers import Block, default_norm, init_linear_and_norm, patchify, unpatchify
from .masked_ar import DiffusionTokens
from .masking import random_orders
from .sample_args import SampleArgs


class CausalAR(nn.Module, MemberMixin):
    # the family contract (models/contract.py); `loss` is the configuration's
    architecture = ARCH_AR
    config_class: type = ARConfig
    causal = True  # one token per step: num_iter is always the L tokens
    export_parts: tuple[str, ...] = ("ar_backbone", "ar_step", "head")  # export.ar_onnx ("head": ce_head for "ce")
    sampling_loop = staticmethod(ar_sampling.sample_tokens)  # what sample_tokens runs: one token per step
    default_num_iter: int | None = None  # its L tokens

    @property
    def sampling_knobs(self) -> tuple[str, ...]:
        """What sample_tokens takes: CFG and temperature, and the diffusion head's sampler and
        steps (the kv-cache is always on; no editing, no other order than the model's)."""
        return ("cfg", "temperature", "sampler", "steps") if self.loss == "diffusion" else ("cfg", "temperature")

    def token_sampler(self, args: SampleArgs, sampler: str | HeadSampler | None, steps: Any) -> Any:
        """The head of the causal loop, the masked loop's token-sampler policy: the Diffusion-Loss
        head's reverse diffusion (masked_ar.DiffusionTokens, `sampler` default DDPM) or the
        categorical draw (ce_head.CategoricalTokens, which has no sampler nor steps)."""
        if self.loss == "ce":
            refuse_diffusion_knobs(sampler=sampler, steps=steps)
            return CategoricalTokens(self.ce_head, args.temperature, args.generator)
        return DiffusionTokens(self.diffloss, args, sampler, self.unpatchify)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        cfg = self.config = ARConfig(**kwargs)  # every field checked
        self.img_size, self.vae_stride, self.patch_size = cfg.img_size, cfg.vae_stride, cfg.patch_size
        self.vae_embed_dim, self.order, self.loss = cfg.vae_embed_dim, cfg.order, cfg.loss
        self.seq_h = self.seq_w = cfg.img_size // cfg.vae_stride // cfg.patch_size
        self.seq_len = self.seq_h * self.seq_w
        self.token_embed_dim = cfg.vae_embed_dim * cfg.patch_size**2
        self.num_classes, self.label_drop_prob = cfg.class_num, cfg.label_drop_prob
        self.diffusion_batch_mul, self.grad_checkpointing = cfg.diffusion_batch_mul, cfg.grad_checkpointing
        self.depth, self.num_heads, self.head_dim = cfg.depth, cfg.num_heads, cfg.embed_dim // cfg.num_heads
        dim, length = cfg.embed_dim, self.seq_len

        self.class_emb = nn.Embedding(cfg.class_num, dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, dim))  # the null class of CFG
        if cfg.loss == "diffusion":
            self.z_proj = nn.Linear(self.token_embed_dim, dim)
        else:
            self.tok_emb = nn.Embedding(cfg.codebook_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, length, dim))  # where an input token sits
        self.target_pos_embed = nn.Parameter(torch.zeros(1, length, dim))  # where the next token goes
        self.input_ln = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.blocks = nn.ModuleList(
            [
                Block(dim, cfg.num_heads, cfg.mlp_ratio, True, cfg.proj_dropout, cfg.attn_dropout)
                for _ in range(cfg.depth)
            ]
        )
        self.norm = default_norm(dim)
        self.head_pos_embed = nn.Parameter(torch.zeros(1, length, dim))
        self.initialize_weights()
        if cfg.loss == "diffusion":
            head = (cfg.diffloss_d, cfg.diffloss_w, cfg.num_sampling_steps, cfg.grad_checkpointing)
            self.diffloss = DiffLoss(self.token_embed_dim, dim, *head)
        else:
            self.ce_head = CEHead(dim, cfg.codebook_size)

    def initialize_weights(self) -> None:
        """MAR's init: N(0, 0.02) embeddings, xavier Linear with zero bias, unit LayerNorm."""
        for p in (self.class_emb.weight, self.fake_latent, self.pos_embed, self.target_pos_embed, self.head_pos_embed):
            nn.init.normal_(p, std=0.02)
        if self.loss == "ce":
            nn.init.normal_(self.tok_emb.weight, std=0.02)
        init_linear_and_norm(self)

    # ---------------------------------------------------------------- tokens and orders
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)(W/p), C p p]."""
        return patchify(x, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C p p] -> [B, C, seq_h p, seq_w p]."""
        return unpatchify(x, self.patch_size, self.vae_embed_dim, self.seq_h, self.seq_w)

    def tokens_of(self, imgs: torch.Tensor) -> torch.Tensor:
        """Training input -> tokens in image order: latents [B, C, h, w] -> [B, L, C] (diffusion),
        codes [B, h, w] -> [B, L] int64 (ce)."""
        side = self.seq_h * self.patch_size
        if self.loss == "diffusion":
            imgs = check_tensor("imgs (latents)", imgs, (None, self.vae_embed_dim, side, side), floating=True)
            return self.patchify(imgs)
        codes = check_tensor("codes (a VQ tokenizer's indices)", imgs, (None, self.seq_h, self.seq_w), floating=False)
        k = self.config.codebook_size
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            got = f"[{int(codes.min())}, {int(codes.max())}]"
            raise ValueError(f"codes must be in [0, {k}) (the codebook size), got {got}")
        return codes.reshape(codes.shape[0], self.seq_len).long()

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, n, C] (or codes [B, n]) -> [B, n, D]."""
        return self.z_proj(x) if self.loss == "diffusion" else self.tok_emb(x)

    def sample_orders(self, bsz: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, L] int64 generation orders: 0..L-1 (raster) or a random permutation per row."""
        device = self.fake_latent.device
        if self.order == "raster":
            return torch.arange(self.seq_len, device=device).expand(bsz, -1)
        return random_orders(bsz, self.seq_len, generator, device)

    def check_orders(self, orders: Any, bsz: int) -> torch.Tensor:
        """User orders [bsz, L]: each row a permutation of 0..L-1 (0..L-1 itself for a raster model)."""
        orders = check_tensor("orders", orders, (bsz, self.seq_len), floating=False)
        want = torch.arange(self.seq_len, device=orders.device)
        not_perm = (orders.sort(dim=1).values != want).any(dim=1)
        if bool(not_perm.any()):
            row = int(not_perm.nonzero()[0, 0])
            raise ValueError(
                f"orders must hold a permutation of 0..{self.seq_len - 1} in every row; row {row} is "
                f"{orders[row].tolist()} (repeated or out-of-range positions)"
            )
        if self.order == "raster" and bool((orders != want).any()):
            raise ValueError("this model was trained in raster order: orders must be 0..L-1 in every row (or None)")
        return orders.long()

    def gather_ordered(self, x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        """Tokens [B, L, C] or codes [B, L] in image order -> in generation order."""
        if x.ndim == 2:
            return x.gather(1, orders)
        return x.gather(1, orders.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    def scatter_ordered(self, x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        """The inverse of `gather_ordered`: generation order -> image order."""
        if x.ndim == 2:
            return torch.zeros_like(x).scatter(1, orders, x)
        return torch.zeros_like(x).scatter(1, orders.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)

    # ---------------------------------------------------------------- backbone
    def input_embeddings(
        self, tokens: torch.Tensor, orders: torch.Tensor, class_embedding: torch.Tensor
    ) -> torch.Tensor:
        """Inputs [B, n, D] from the first n-1 tokens in generation order (tokens [B, n-1, C] or
        codes [B, n-1]) and the positions orders [B, n] of the first n tokens."""
        pos, tpos = self.pos_embed[0], self.target_pos_embed[0]  # [L, D]
        first = class_embedding.unsqueeze(1)  # [B, 1, D]
        rest = self.embed_tokens(tokens) + pos[orders[:, :-1]]  # [B, n-1, D]
        x = torch.cat([first.to(rest.dtype), rest], dim=1) + tpos[orders]
        return self.input_ln(x)

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, True, use_reentrant=False)
            else:
                x = blk(x, is_causal=True)
        return x

    def backbone(self, tokens: torch.Tensor, orders: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """z [B, n, D] (z[:, i] predicts the token at orders[:, i]) from the first n-1 tokens in
        generation order, orders [B, n] and the class embedding [B, D]: the uncached causal forward."""
        x = self._blocks(self.input_embeddings(tokens, orders, class_embedding))
        return self.norm(x) + self.head_pos_embed[0][orders]

    # ---------------------------------------------------------------- one token at a time (kv-cache)
    def allocate_cache(self, rows: int, dtype: torch.dtype | None = None) -> KVCache:
        """A preallocated cache for `rows` sequences (2 x batch with CFG) of this model."""
        dtype = dtype or self.fake_latent.dtype
        return KVCache.allocate(
            self.depth, rows, self.num_heads, self.seq_len, self.head_dim, dtype, self.fake_latent.device
        )

    def step_input(
        self,
        token: torch.Tensor | None,
        pos: torch.Tensor | None,
        next_pos: torch.Tensor,
        class_embedding: torch.Tensor,
    ) -> torch.Tensor:
        """The input [R, 1, D] at one index: the class embedding [R, D] at index 0 (token None),
        else the previous token [R, C] (code [R]) at image position pos [R]; plus the next
        position next_pos [R]."""
        if token is None:
            x = class_embedding
        else:
            x = self.embed_tokens(token) + self.pos_embed[0][pos]
        x = x + self.target_pos_embed[0][next_pos]
        return self.input_ln(x.unsqueeze(1))

    def step(self, x: torch.Tensor, next_pos: torch.Tensor, cache: KVCache, index: int) -> torch.Tensor:
        """z [R, D] for the input x [R, 1, D] at sequence index `index`, through the kv-cache."""
        h = blocks_step(self.blocks, x, cache, index)[:, 0]  # [R, D]
        return self.norm(h) + self.head_pos_embed[0][next_pos]

    # ---------------------------------------------------------------- training
    def class_embedding(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """class_emb(labels) [B, D], replaced by the null class with probability label_drop_prob in training."""
        ce = self.class_emb(labels)
        if self.training and self.label_drop_prob > 0:
            drop = (rand((labels.shape[0],), generator, ce.device) < self.label_drop_prob).unsqueeze(-1).to(ce.dtype)
            ce = drop * self.fake_latent + (1 - drop) * ce
        return ce

    def forward(
        self, imgs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training loss (next-token prediction in the model's order) for latents [B, C, h, w]
        (diffusion) or codes [B, h, w] (ce) and class labels [B]."""
        check_generator(generator)
        self.check_weights()
        x = self.tokens_of(imgs)  # [B, L, C] or [B, L]
        if x.shape[0] == 0:
            raise ValueError("the training batch is empty: imgs has 0 rows")
        self._check_labels(labels, x.shape[0])
        orders = self.sample_orders(x.shape[0], generator)
        target = self.gather_ordered(x, orders).detach()  # [B, L(, C)] in generation order
        z = self.backbone(target[:, :-1], orders, self.class_embedding(labels, generator))  # [B, L, D]
        bsz, seq_len, dim = z.shape
        if self.loss == "ce":
            return self.ce_head.loss(z.reshape(bsz * seq_len, dim), target.reshape(bsz * seq_len))
        mul = self.diffusion_batch_mul
        return self.diffloss(
            target=target.reshape(bsz * seq_len, -1).repeat(mul, 1),
            z=z.reshape(bsz * seq_len, dim).repeat(mul, 1),
            generator=generator,
        )
