"""Writing sample images: a labelled grid PNG and an npz archive (numpy + pillow only,
so the torch-free deployment sampler can use it too)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .files import atomic_write


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
    grid_images: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
    per_image: bool = False,
) -> dict[str, Path]:
    """Write out_dir/grid.png and out_dir/samples.npz (`images` uint8 [N, H, W, C], `labels` int [N],
    and the `extra` arrays under their own keys). The grid shows `grid_images` when given (e.g. the
    inputs above the results), else `images`. `per_image`: also samples/class{c}_{i}.png, each
    image at its own size (the i-th of class c), ready for `marengine edit --images`."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    shown = images if grid_images is None else grid_images
    upscale = max(1, 64 // shown.shape[1])  # tiny images (digits) are enlarged to be seen
    grid = make_grid(shown, ncols=ncols, upscale=upscale)
    atomic_write(out / "grid.png", lambda tmp: _image(grid).save(tmp, format="PNG"))
    save_npz(out / "samples.npz", images=images, labels=labels, **(extra or {}))
    paths = {"grid": out / "grid.png", "samples": out / "samples.npz"}
    if per_image:
        paths["pngs"] = save_pngs(out / "samples", images, labels)
    return paths


def save_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """folder/class{c}_{i}.png for every image (uint8 [N, H, W, C]): the i-th image of label c."""
    folder.mkdir(parents=True, exist_ok=True)
    seen: dict[int, int] = {}
    for image, label in zip(images, labels.tolist()):
        i = seen[label] = seen.get(label, -1) + 1
        picture = _image(image)
        atomic_write(folder / f"class{label}_{i}.png", lambda tmp, p=picture: p.save(tmp, format="PNG"))
    return folder


def _image(array: np.ndarray):
    """A PIL image of uint8 [H, W, C] (C = 1: greyscale)."""
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """np.savez, written whole or not at all."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **arrays)

    return atomic_write(path, write)
