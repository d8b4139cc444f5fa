"""Synthetic training data for the input-pipeline benchmarks: a sharded latent cache of the
KL-16 shape at 256 px (random moments; the read path is what they measure, not the values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import VAE_LATENT_SCALE
from ..training.latent_cache import LatentCacheWriter

MOMENTS = (2, 32, 16, 16)  # [image/mirror, 2C, h, w] of KL-16 at 256 px: 64 KiB per item in float32


def write_latent_cache(folder: Path, n: int, classes: int = 10, shard_size: int = 1024) -> None:
    """A latent cache of `n` items of random moments (log-variances of a confident posterior)
    and random labels in [0, classes), written through the cache writer; kept if complete."""
    settings = {
        "synthetic": True,
        "scale": VAE_LATENT_SCALE,
        "moments_shape": list(MOMENTS),
        "dtype": "float32",
        "num_classes": classes,
        "class_names": [str(c) for c in range(classes)],
        "num_items": n,
        "shard_size": shard_size,
    }
    w = LatentCacheWriter(folder, settings)
    if w.prepare():
        return
    rng = np.random.default_rng(0)
    for i in w.pending():
        k = len(w.item_range(i))
        moments = rng.standard_normal((k, *MOMENTS), dtype=np.float32)  # [k, 2, 2C, h, w]
        moments[:, :, MOMENTS[1] // 2 :] = -4.0
        w.write(i, rng.integers(0, classes, k), moments)
    w.finalize()
