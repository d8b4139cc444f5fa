"""Transformer building blocks of the MAR backbone.

Parameter names follow timm's VisionTransformer `Block` (norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2) so official checkpoints load strictly;
attention runs on `scaled_dot_product_attention`.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LAYERNORM_EPS

default_norm: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=LAYERNORM_EPS)


# (fresh k, v [R, H, n, hd]) -> (the keys and values the rows attend to [R, H, T, hd])
KVHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Attention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, is_causal: bool = False, kv: KVHook | None = None) -> torch.Tensor:
        """Self-attention of the N rows x [B, N, D]; is_causal: row i sees rows 0..i only (the AR family).

        kv: the one hook every cache uses (the causal kv-cache, MAR's backbone reuse): it gets
        the rows' fresh keys and values [B, H, N, hd], may store them, and returns the keys and
        values they attend to [B, H, T, hd] (with a hook, attention is not causal: the hook
        gives exactly the positions to see)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, hd]
        if kv is not None:
            k, v = kv(k, v)
            is_causal = False
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=is_causal)
        x = x.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or default_norm
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x: torch.Tensor, is_causal: bool = False, kv: KVHook | None = None) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D]; kv: the attention's cache hook (Attention.forward)."""
        x = x + self.attn(self.norm1(x), is_causal=is_causal, kv=kv)
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------- shared by the backbones (MAR, causal AR)
def init_linear_and_norm(module: nn.Module) -> None:
    """MAR's init of every submodule: xavier-uniform Linear weights with zero bias, LayerNorm
    weight 1 and bias 0 (embeddings and learned positions are the caller's)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Latents [B, C, H, W] -> tokens [B, (H/p)(W/p), C p p] in raster order (MAR's layout)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, p: int, channels: int, seq_h: int, seq_w: int) -> torch.Tensor:
    """Tokens [B, seq_h seq_w, C p p] -> latents [B, C, seq_h p, seq_w p] (patchify's inverse)."""
    b = x.shape[0]
    x = x.reshape(b, seq_h, seq_w, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, seq_h * p, seq_w * p)
