"""Reading images and writing samples (numpy + pillow only, so the torch-free deployment
sampler can use it too).

Reading: `open_image` + `to_uint8_image` are the one way an image file becomes 8-bit
grayscale or RGB, for training (training/data.py) and for editing (editing.py):
16-bit images are scaled to 8 bits (round(v / 257)), palette images are expanded, and
transparency is composited over black; floating-point images are refused, and so is a
file larger than PIL's decompression-bomb limit, each with one line naming the file.
Writing: a labelled grid PNG and an npz archive.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write, claim_output_folder, record_outputs, remove_outputs

SAMPLES_KIND = "samples"  # the output kind in a samples folder's manifest (files.claim_output_folder)

# PIL modes of 16-bit (or wider integer) single-channel images, read as values in [0, 65535]
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


def open_image(path: str | os.PathLike) -> Any:
    """The decoded PIL image of a file; a missing, unreadable or decompression-bomb file is one
    FileNotFoundError / ValueError line naming it."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode now: truncated data fails here
                return im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(
            f"{path}: refused, its size exceeds PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels (a decompression "
            f"bomb?); raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted ({e})"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for broken files
        raise ValueError(f"{path} is not a readable image: {e}") from None


def to_uint8_image(im: Any, channels: int, source: str = "image") -> Any:
    """A PIL image of any mode as an 8-bit "L" (channels 1) or "RGB" (channels 3) PIL image:
    16-bit values v become round(v / 257), palettes are expanded, alpha is composited over black."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"images have 1 or 3 channels, got {channels}")
    mode = im.mode
    if mode in WIDE_MODES:
        wide = np.asarray(im).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise ValueError(
                f"{source}: {mode} pixels in [{wide.min()}, {wide.max()}] are outside the 16-bit range: "
                "save it as an 8- or 16-bit image"
            )
        im = Image.fromarray(((wide + 128) // 257).astype(np.uint8), mode="L")
    elif mode == "F":
        raise ValueError(f"{source} is a floating-point image (mode F): save it as an 8- or 16-bit image")
    elif mode == "P" or mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ALPHA_MODES:
        rgba = np.asarray(im.convert("RGBA" if im.mode in ("RGBa", "PA", "RGBA") else "LA")).astype(np.int64)
        color, alpha = rgba[..., :-1], rgba[..., -1:]
        flat = ((color * alpha + 127) // 255).astype(np.uint8)  # over black: round(c * a / 255)
        im = Image.fromarray(flat[..., 0] if flat.shape[-1] == 1 else flat, mode="L" if flat.shape[-1] == 1 else "RGB")
    target = "L" if channels == 1 else "RGB"
    if im.mode != target:
        try:
            im = im.convert(target)
        except (ValueError, OSError) as e:
            raise ValueError(f"{source}: images of mode {mode} cannot be converted to {target}: {e}") from None
    return im


def read_image(path: str | os.PathLike, channels: int) -> np.ndarray:
    """uint8 [H, W, channels] of an image file (see to_uint8_image)."""
    arr = np.asarray(to_uint8_image(open_image(path), channels, str(path)))
    return arr[..., None] if arr.ndim == 2 else arr


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
    replace: bool = False,
    kind: str = SAMPLES_KIND,
) -> dict[str, Path]:
    """Write out_dir/grid.png and out_dir/samples.npz (`images` uint8 [N, H, W, C], `labels` int [N],
    and the `extra` arrays under their own keys). The grid shows `grid_images` when given (e.g. the
    inputs above the results), else `images`. `per_image`: also samples/class{c}_{i}.png, each
    image at its own size (the i-th of class c), ready for `marengine edit --images`.

    `out_dir` is new or empty or holds marengine's `kind` output (files.claim_output_folder: a
    folder with other files is refused); `replace` first deletes the earlier output there."""

    out = claim_output_folder(out_dir, kind, reuse=True)
    if replace:
        remove_outputs(out, kind)
    record_outputs(out, kind, ["grid.png", "samples.npz"] + (["samples"] if per_image else []))
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
