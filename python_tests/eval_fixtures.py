"""A random-weight FID Inception file in the standard layout (torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`), written from a table of its conv layers transcribed
from torch-fidelity's `FeatureExtractorInceptionV3` (not from marengine's model)."""

from __future__ import annotations

from pathlib import Path

import torch

# block -> [(layer, in channels, out channels, kernel h, kernel w)]
_A = lambda cin, pool: [  # noqa: E731
    ("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1), ("branch5x5_2", 48, 64, 5, 5),
    ("branch3x3dbl_1", cin, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
    ("branch_pool", cin, pool, 1, 1),
]  # fmt: skip
_C = lambda c7: [  # noqa: E731
    ("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
    ("branch7x7_3", c7, 192, 7, 1), ("branch7x7dbl_1", 768, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
    ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", c7, 192, 1, 7),
    ("branch_pool", 768, 192, 1, 1),
]  # fmt: skip
_E = lambda cin: [  # noqa: E731
    ("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1), ("branch3x3_2a", 384, 384, 1, 3),
    ("branch3x3_2b", 384, 384, 3, 1), ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
    ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1), ("branch_pool", cin, 192, 1, 1),
]  # fmt: skip
LAYOUT: dict[str, list[tuple[str, int, int, int, int]]] = {
    "": [
        ("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
        ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3),
    ],
    "Mixed_5b.": _A(192, 32), "Mixed_5c.": _A(256, 64), "Mixed_5d.": _A(288, 64),
    "Mixed_6a.": [
        ("branch3x3", 288, 384, 3, 3), ("branch3x3dbl_1", 288, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3),
        ("branch3x3dbl_3", 96, 96, 3, 3),
    ],
    "Mixed_6b.": _C(128), "Mixed_6c.": _C(160), "Mixed_6d.": _C(160), "Mixed_6e.": _C(192),
    "Mixed_7a.": [
        ("branch3x3_1", 768, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3), ("branch7x7x3_1", 768, 192, 1, 1),
        ("branch7x7x3_2", 192, 192, 1, 7), ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3),
    ],
    "Mixed_7b.": _E(1280), "Mixed_7c.": _E(2048),
}  # fmt: skip


def random_inception_state(seed: int = 0, batches_tracked: bool = True) -> dict[str, torch.Tensor]:
    """Random weights in the standard layout, scaled so activations stay O(1) through the network."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for prefix, layers in LAYOUT.items():
        for name, cin, cout, kh, kw in layers:
            p = f"{prefix}{name}."
            fan_in = cin * kh * kw
            state[p + "conv.weight"] = torch.randn(cout, cin, kh, kw, generator=g) * (2.0 / fan_in) ** 0.5
            state[p + "bn.weight"] = 0.5 + torch.rand(cout, generator=g)
            state[p + "bn.bias"] = 0.1 * torch.randn(cout, generator=g)
            state[p + "bn.running_mean"] = 0.1 * torch.randn(cout, generator=g)
            state[p + "bn.running_var"] = 0.5 + torch.rand(cout, generator=g)
            if batches_tracked:
                state[p + "bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 2048**-0.5
    state["fc.bias"] = 0.1 * torch.randn(1008, generator=g)
    return state


def write_inception_file(path: Path, seed: int = 0, batches_tracked: bool = True) -> Path:
    torch.save(random_inception_state(seed, batches_tracked), path)
    return path
