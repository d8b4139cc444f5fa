"""Counted FLOPs of MAR's two networks (2 FLOPs per multiply-add; layer norms, activations
and the softmax are left out: they are a few percent at these widths).

Head (SimpleMLPAdaLN), per network row and diffusion step: each residual block has the
AdaLN modulation (W -> 3W) and the MLP (W -> W -> W): 10 W^2; the final layer's modulation
(W -> 2W) 4 W^2; the input and output projections 6 C W. That is the (10 depth + 4) W^2 of
DESIGN.md and benchmarks/bench_head.py plus the small projections. With CFG the network
runs two rows per token (conditional and unconditional).

Backbone, per image and call: z_proj on every token, then the encoder on buffer + K known
tokens and the decoder on buffer + L tokens, each block 2 (4 + 2 mlp_ratio) D^2 per token
for its linears plus 4 n^2 D for the attention scores and the weighted sum.
"""

from __future__ import annotations

from typing import Any

from ..schedules import mask_lengths


def head_flops_per_row_step(width: int, depth: int, channels: int) -> float:
    return (10 * depth + 4) * width**2 + 6 * channels * width


def head_flops(cfg: dict[str, Any], rows: int, steps: int, guided: bool) -> float:
    """FLOPs of sampling `rows` tokens with `steps` diffusion steps (net rows doubled with CFG)."""
    channels = cfg["vae_embed_dim"] * cfg["patch_size"] ** 2
    per = head_flops_per_row_step(cfg["diffloss_w"], cfg["diffloss_d"], channels)
    cond = 2 * cfg["decoder_embed_dim"] * cfg["diffloss_w"]  # cond_embed, once per row
    net_rows = rows * (2 if guided else 1)
    return net_rows * (per * steps + cond)


def _blocks(tokens: int, dim: int, depth: int, mlp_ratio: float) -> float:
    linears = 2 * (4 + 2 * mlp_ratio) * dim**2 * tokens
    attention = 4 * tokens**2 * dim
    return depth * (linears + attention)


def seq_len(cfg: dict[str, Any]) -> int:
    return (cfg["img_size"] // cfg["vae_stride"] // cfg["patch_size"]) ** 2


def backbone_flops(cfg: dict[str, Any], known: int) -> float:
    """FLOPs of one backbone call for one image with `known` known tokens."""
    L, buf = seq_len(cfg), cfg["buffer_size"]
    de, dd, r = cfg["encoder_embed_dim"], cfg["decoder_embed_dim"], cfg["mlp_ratio"]
    c = cfg["vae_embed_dim"] * cfg["patch_size"] ** 2
    flops = 2 * c * de * L  # z_proj
    flops += _blocks(buf + known, de, cfg["encoder_depth"], r)
    flops += 2 * de * dd * (buf + known)  # decoder_embed
    flops += _blocks(buf + L, dd, cfg["decoder_depth"], r)
    return flops


def generation_flops(cfg: dict[str, Any], num_iter: int, steps: int, guided: bool) -> dict[str, float]:
    """FLOPs per generated image: the backbone over the `num_iter` iterations of the cosine
    schedule and the head over every token; both doubled with CFG."""
    L = seq_len(cfg)
    num_iter = min(num_iter, L)
    unknown_before = [L] + mask_lengths(L, num_iter)[:-1]
    mul = 2 if guided else 1
    backbone = mul * sum(backbone_flops(cfg, L - u) for u in unknown_before)
    head = head_flops(cfg, L, steps, guided)
    return {"backbone": backbone, "head": head, "total": backbone + head}
