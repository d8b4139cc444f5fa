"""Generation orders, masks and the cosine masking schedule of MAR sampling."""
from __future__ import annotations

import math

import torch

from ..utils import rand


def sample_mask_ratio(ratio_min: float, generator: torch.Generator | None) -> float:
    """A training mask ratio from N(1, 0.25^2) truncated to [ratio_min, 1] (inverse-CDF draw)."""
    lo = torch.special.ndtr(torch.tensor((ratio_min - 1.0) / 0.25, dtype=torch.float64, device="cpu"))
    u = lo + (0.5 - lo) * rand((1,), generator, "cpu").double()
    return float(1.0 + 0.25 * torch.special.ndtri(u))


def random_orders(bsz: int, seq_len: int, generator: torch.Generator | None,
                  device: torch.device | str) -> torch.Tensor:
    """[B, L] int64: a uniformly random permutation of positions per row."""
    return rand((bsz, seq_len), generator, device).argsort(dim=1)


def mask_by_order(num_masked: int, orders: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: True at the first `num_masked` positions of each row's order."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(1, orders[:, :num_masked], True)


def next_mask_len(step: int, num_iter: int, seq_len: int, num_masked: int) -> int:
    """Tokens still masked after `step` (0-based): floor(L cos(pi/2 (step+1)/T)),
    clamped to [1, num_masked - 1] so that every step predicts at least one token."""
    target = math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
    return max(1, min(num_masked - 1, target))


def tokens_per_step(seq_len: int, num_iter: int) -> list[int]:
    """How many tokens each of the `num_iter` steps predicts (the last one takes the rest)."""
    counts, masked = [], seq_len
    for step in range(num_iter):
        nxt = 0 if step >= num_iter - 1 else next_mask_len(step, num_iter, seq_len, masked)
        counts.append(masked - nxt)
        masked = nxt
    return counts


def cfg_at(cfg: float, schedule: str, seq_len: int, mask_len: int) -> float:
    """Guidance scale of one step: linear ramps from 1 as tokens get known (Muse), or constant."""
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * (seq_len - mask_len) / seq_len
    if schedule == "constant":
        return cfg
    raise ValueError(f"unknown cfg_schedule {schedule!r}; choose 'linear' or 'constant'")
