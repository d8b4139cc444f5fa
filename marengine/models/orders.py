"""Generation orders of the masked loop: which unknown token is generated when (a policy).

The loop reveals an order from its end: `orders[:, -1]` is generated first (see
masking.mask_by_order), and known tokens (editing) sit at the end as if generated before
the first iteration. Every order here is drawn from the caller's generator only.

- `random`   the official order: a uniformly random permutation per image.
- `halton`   a low-discrepancy order: the cells of the token grid in the order a 2-D Halton
             sequence (bases 2 and 3) first visits them, shifted by a random toroidal offset
             per image; the first tokens are spread evenly over the image.
- `lattice`  structure then detail, in the spirit of GtR: the tokens of the stride-2 lattice
             (every other row and column, a quarter of the image) first in random order, then
             the rest in random order.
"""

from __future__ import annotations

import functools

import torch

from ..config import GENERATION_ORDERS
from ..utils import rand
from .masking import random_orders


def generation_orders(
    kind: str,
    seq_h: int,
    seq_w: int,
    bsz: int,
    generator: torch.Generator | None,
    device: torch.device | str,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, L] int64 orders of kind `kind` for a seq_h x seq_w token grid; known [B, L] bool
    (editing): only the unknown tokens are ordered, the known ones come last."""
    L = seq_h * seq_w
    if kind not in GENERATION_ORDERS:
        raise ValueError(f"unknown generation order {kind!r}; choose one of {', '.join(GENERATION_ORDERS)}")
    if kind == "random" and known is None:
        return random_orders(bsz, L, generator, device)  # the official draw, bit for bit
    if kind == "random":
        keys = rand((bsz, L), generator, device)  # [B, L]: higher = generated earlier
    elif kind == "halton":
        shift = (rand((bsz, 2), generator, device) * torch.tensor([seq_h, seq_w], device=device)).long()  # [B, 2]
        rows = (torch.arange(seq_h, device=device).view(1, -1, 1) + shift[:, 0].view(-1, 1, 1)) % seq_h
        cols = (torch.arange(seq_w, device=device).view(1, 1, -1) + shift[:, 1].view(-1, 1, 1)) % seq_w
        rank = _halton_rank(seq_h, seq_w).to(device)[rows, cols].reshape(bsz, L)  # [B, L]
        keys = -(rank.float() / L)  # rank 0 generated first
    else:  # lattice
        grid = torch.zeros(seq_h, seq_w, device=device)
        grid[::2, ::2] = 1.0
        keys = rand((bsz, L), generator, device) + grid.reshape(1, L)  # the lattice first
    if known is not None:
        keys = keys + 4.0 * known.to(keys.dtype)  # known tokens at the end: "generated" before the first iteration
    return keys.argsort(dim=1)  # ascending: the highest key, generated first, at the end


@functools.lru_cache(maxsize=16)
def _halton_rank(seq_h: int, seq_w: int) -> torch.Tensor:
    """[seq_h, seq_w] int64: the step at which the Halton sequence (2, 3) first visits each cell."""
    rank = torch.full((seq_h, seq_w), -1, dtype=torch.int64)
    seen, n = 0, 1
    while seen < seq_h * seq_w:
        r, c = int(_radical_inverse(n, 3) * seq_h), int(_radical_inverse(n, 2) * seq_w)
        if rank[r, c] < 0:
            rank[r, c] = seen
            seen += 1
        n += 1
    return rank


def _radical_inverse(n: int, base: int) -> float:
    """The van der Corput value of n in `base`: its digits mirrored behind the point."""
    out, scale = 0.0, 1.0 / base
    while n:
        n, digit = divmod(n, base)
        out += digit * scale
        scale /= base
    return out
