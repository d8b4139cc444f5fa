"""Writing sample images: a labelled grid PNG and an npz archive (numpy + pillow only,
so the torch-free deployment sampler can use it too)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .files import atomic_write, claim_output_folder, record_outputs, remove_outputs

SAMPLES_KIND = "samples"  # the output kind in a samples folder's manifest (files.claim_output_folder)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1, upscale: int = 1) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
        h, w = h * upscale, w * upscale
    ncols = ncols or max(1, int(math.ceil(math.sqrt(n))))
    nrows = max(1, int(math.ceil(n / ncols)))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[
            i
        ]
    return grid


def save_samples(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    ncols: int | None = None,
    replace: bool = False,
    kind: str = SAMPLES_KIND,
) -> dict[str, Path]:
    """Write out_dir/grid.png and out_dir/samples.npz (`images` uint8 [N, H, W, C], `labels` int [N]).

    `out_dir` is new or empty or holds marengine's `kind` output (files.claim_output_folder: a
    folder with other files is refused); `replace` first deletes the earlier output there."""
    from PIL import Image

    out = claim_output_folder(out_dir, kind, reuse=True)
    if replace:
        remove_outputs(out, kind)
    record_outputs(out, kind, ["grid.png", "samples.npz"])
    labels = np.asarray(labels, dtype=np.int64)
    upscale = max(1, 64 // images.shape[1])  # tiny images (digits) are enlarged to be seen
    grid = make_grid(images, ncols=ncols, upscale=upscale)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    atomic_write(out / "grid.png", lambda tmp: picture.save(tmp, format="PNG"))
    save_npz(out / "samples.npz", images=images, labels=labels)
    return {"grid": out / "grid.png", "samples": out / "samples.npz"}


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """np.savez, written whole or not at all."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **arrays)

    return atomic_write(path, write)
