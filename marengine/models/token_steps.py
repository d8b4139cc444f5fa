"""Per-token head steps of the masked loop (schedules.TokenSteps): which predicted tokens get the
boosted diffusion-step count, from a cheap high-frequency score of their known neighbours.

The score of a position is the local variance of the known tokens in its 3x3 neighbourhood
(itself excluded), averaged over channels: a busy, detailed neighbourhood asks for a finer
sample. A position with fewer than two known neighbours (early iterations, the middle of a
hole) scores +inf: nothing is known about its surroundings yet. Per image, the `boosted`
highest-scoring predicted tokens get the boost (ties broken by position, the same on every
device); the others the base count. All on the tokens' device, no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schedules import Iteration, TokenSteps


def neighbour_variance(tokens: torch.Tensor, known: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, L] local variance of the known 3x3 neighbours of every position (inf: fewer than two).
    tokens [B, L, C] (row-major h x w), known [B, L] bool."""
    B, L, C = tokens.shape
    k = known.to(tokens.dtype).view(B, 1, h, w)  # [B, 1, h, w]
    x = tokens.transpose(1, 2).reshape(B, C, h, w) * k  # [B, C, h, w], zero where unknown
    ring = torch.ones(1, 1, 3, 3, dtype=tokens.dtype, device=tokens.device)
    ring[0, 0, 1, 1] = 0.0
    cnt = F.conv2d(k, ring, padding=1)  # [B, 1, h, w]
    ring_c = ring.expand(C, 1, 3, 3)
    s1 = F.conv2d(x, ring_c, padding=1, groups=C)  # [B, C, h, w]
    s2 = F.conv2d(x * x, ring_c, padding=1, groups=C)
    mean = s1 / cnt.clamp(min=1.0)
    var = (s2 / cnt.clamp(min=1.0) - mean * mean).clamp(min=0.0).mean(1, keepdim=True)  # [B, 1, h, w]
    var = torch.where(cnt >= 2, var, torch.full_like(var, float("inf")))
    return var.view(B, L)


def token_row_steps(
    policy: TokenSteps,
    it: Iteration,
    default: int,
    tokens: torch.Tensor,
    known: torch.Tensor,
    to_pred: torch.Tensor,
    pred_idx: tuple[torch.Tensor, torch.Tensor],
    grid: tuple[int, int],
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(row_steps [P] int32 for the predicted rows `pred_idx` (the loop's nonzero order of
    to_pred [B, L]), (base, boost)). Every image predicts P / B tokens (the masked loop's
    schedule), so no count is read back from the device."""
    base, boost = policy.counts(it, default)
    B, L = to_pred.shape
    per_image = pred_idx[0].shape[0] // B if B else 0
    score = neighbour_variance(tokens.float(), known, *grid)  # [B, L]
    score = torch.where(to_pred, score, torch.full_like(score, float("-inf")))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # [B, L]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=score.device).expand(B, L).contiguous())
    steps = torch.where(rank < policy.boosted(it, per_image), boost, base).to(torch.int32)  # [B, L]
    return steps[pred_idx], (base, boost)
