"""Generation orders of the masked loop (models/orders.py): each is a permutation, puts known
tokens last, realises its own idea of "which first", and works with CFG, editing and caching."""

from __future__ import annotations

import pytest
import torch

from marengine.config import GENERATION_ORDERS
from marengine.models.masking import random_orders
from marengine.models.orders import generation_orders


def first_generated(orders: torch.Tensor, n: int) -> torch.Tensor:
    """The n positions each row generates first (the loop reveals an order from its end)."""
    return orders[:, -n:]


@pytest.mark.parametrize("kind", GENERATION_ORDERS)
@pytest.mark.parametrize("h,w", [(4, 4), (8, 8), (3, 5), (1, 7)])
def test_orders_are_permutations_with_known_tokens_last(kind, h, w):
    g = torch.Generator().manual_seed(0)
    L = h * w
    orders = generation_orders(kind, h, w, 3, g, "cpu")
    assert orders.shape == (3, L) and torch.equal(orders.sort(1).values, torch.arange(L).expand(3, -1))
    known = torch.rand(3, L, generator=g) < 0.4
    known[:, 0] = True
    known = known & (known.sum(1, keepdim=True) >= 0)
    edit = generation_orders(kind, h, w, 3, g, "cpu", known)
    for row in range(3):
        k = int(known[row].sum())
        assert set(edit[row, L - k :].tolist()) == set(known[row].nonzero().flatten().tolist())


def test_random_is_the_official_draw():
    a = generation_orders("random", 4, 4, 2, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(a, random_orders(2, 16, torch.Generator().manual_seed(3), "cpu"))


def test_lattice_generates_the_stride_two_lattice_first():
    orders = generation_orders("lattice", 8, 8, 4, torch.Generator().manual_seed(1), "cpu")
    lattice = {r * 8 + c for r in range(0, 8, 2) for c in range(0, 8, 2)}
    for row in first_generated(orders, 16):
        assert set(row.tolist()) == lattice


def min_toroidal_gap(row: torch.Tensor, h: int, w: int) -> int:
    """The smallest squared distance (wrapping around the image) between the given positions."""
    pts = [(p // w, p % w) for p in row.tolist()]
    gap = lambda a, b, n: min(abs(a - b), n - abs(a - b))  # noqa: E731
    return min(gap(a[0], b[0], h) ** 2 + gap(a[1], b[1], w) ** 2 for i, a in enumerate(pts) for b in pts[i + 1 :])


def test_halton_spreads_its_first_tokens_over_the_image():
    """No two of the first 8 tokens of a Halton order on an 8x8 grid are neighbours (a random
    order almost always has some); the toroidal shift varies the order per image."""
    orders = generation_orders("halton", 8, 8, 16, torch.Generator().manual_seed(2), "cpu")
    assert all(min_toroidal_gap(row, 8, 8) >= 2 for row in first_generated(orders, 8))
    rand = generation_orders("random", 8, 8, 16, torch.Generator().manual_seed(2), "cpu")
    assert sum(min_toroidal_gap(row, 8, 8) >= 2 for row in first_generated(rand, 8)) <= 4
    assert len({tuple(r.tolist()) for r in orders}) > 1


def test_unknown_order_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown generation order 'spiral'"):
        generation_orders("spiral", 4, 4, 1, None, "cpu")
    from marengine.sampling.engine import SampleSettings

    with pytest.raises(ValueError, match="generation order"):
        SampleSettings(order="spiral")


@pytest.mark.parametrize("order", ["halton", "lattice"])
def test_orders_sample_with_cfg_editing_and_cache(tiny_mar, order):
    torch.manual_seed(0)
    for p in tiny_mar.parameters():
        p.data.normal_(0, 0.05)
    g = torch.Generator().manual_seed(0)
    L, C = tiny_mar.seq_len, tiny_mar.token_embed_dim
    labels = torch.tensor([1, 2])
    run = lambda **kw: tiny_mar.sample_tokens(  # noqa: E731
        2, 4, 3.0, "linear", labels, 1.0, generator=torch.Generator().manual_seed(0), backend="torch", **kw
    )
    plain = run(order=order)
    assert torch.isfinite(plain).all() and not torch.equal(plain, run())  # the order changes the image
    assert run(order=order, cache="refresh=1,warmup=1").equal(plain)  # caching that never reuses: identical
    assert torch.isfinite(run(order=order, cache="refresh=3,warmup=1")).all()
    known_tokens = torch.randn(2, L, C, generator=g)
    known = torch.zeros(2, L, dtype=torch.bool)
    known[:, : L // 2] = True
    out = tiny_mar.patchify(run(order=order, known_tokens=known_tokens, known_mask=known))
    assert torch.equal(out[known], known_tokens[known])  # editing keeps the known tokens exactly
