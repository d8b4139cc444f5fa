"""Random generation orders and masks of MAR (torch): the training mask ratio, a random
permutation per image and the mask of the first positions of each order. The masking
schedule itself (how many tokens per iteration) is torch-free: marengine.schedules."""

from __future__ import annotations

import torch

from ..utils import rand


def sample_mask_ratio(ratio_min: float, generator: torch.Generator | None) -> float:
    """A training mask ratio from N(1, 0.25^2) truncated to [ratio_min, 1] (inverse-CDF draw)."""
    lo = torch.special.ndtr(torch.tensor((ratio_min - 1.0) / 0.25, dtype=torch.float64, device="cpu"))
    u = lo + (0.5 - lo) * rand((1,), generator, "cpu").double()
    return float(1.0 + 0.25 * torch.special.ndtri(u))


def random_orders(
    bsz: int, seq_len: int, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """[B, L] int64: a uniformly random permutation of positions per row."""
    return rand((bsz, seq_len), generator, device).argsort(dim=1)


def mask_by_order(num_masked: int, orders: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: True at the first `num_masked` positions of each row's order."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(1, orders[:, :num_masked], True)
