"""Sinusoidal timestep features (the input of the head's timestep embedder)."""

from __future__ import annotations

import math

import torch

FREQ_DIM = 256
MAX_PERIOD = 10000


def timestep_frequencies(t: torch.Tensor, dim: int = FREQ_DIM, max_period: int = MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal features [N, dim] = (cos(t f_k), sin(t f_k)), f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
