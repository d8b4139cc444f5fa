"""Images and masks for editing, torch-free (numpy + pillow): the pipeline and the deploy
sampler both use these.

Images: PIL images, image files, or uint8 arrays [N, H, W, C] / one [H, W, C] or [H, W];
masks in pixels: True / nonzero = the pixel is to be generated (a [H, W] mask applies to
every image). A token is known only when every pixel it covers is known.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .imageio import read_image, to_uint8_image


def load_images(paths: Sequence[str | os.PathLike], channels: int) -> np.ndarray:
    """uint8 [N, H, W, channels] from image files (converted to grayscale or RGB by
    imageio.read_image, as training reads them: 16-bit and palette images included)."""
    if not paths:
        raise ValueError("no image files given")
    return as_uint8_images([read_image(p, channels) for p in paths])


def _is_pil(x: Any) -> bool:
    return hasattr(x, "convert") and hasattr(x, "size") and hasattr(x, "mode")


def as_uint8_images(images: Any, channels: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] from PIL images (of any mode: converted by imageio.to_uint8_image to
    `channels`, or to RGB / grayscale as they come), a list of arrays, or an array."""
    if _is_pil(images):  # one PIL image
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        arrays = [np.asarray(_pil_uint8(im, channels)) if _is_pil(im) else np.asarray(im) for im in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"all images must have one size, got {sorted(shapes)}")
        arr = np.stack(arrays)
    elif isinstance(images, np.ndarray):
        # one image: [H, W] or [H, W, C] with C in (1, 3); a batch: [N, H, W] (grayscale) or [N, H, W, C]
        one = images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3))
        arr = images[None] if one else images
    else:
        raise TypeError(f"images must be PIL images or a uint8 array, got {type(images).__name__}")
    if arr.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (0..255), got {arr.dtype}")
    if arr.ndim == 3:  # [N, H, W] grayscale
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"image arrays must be [N, H, W, C] or [H, W, C], got shape {arr.shape}")
    return arr


def _pil_uint8(im: Any, channels: int | None) -> Any:
    if channels is None:
        channels = 1 if im.mode in ("1", "L", "LA", "La", "F", "I") or im.mode.startswith("I;16") else 3
    return to_uint8_image(im, channels)


def check_images(arr: np.ndarray, channels: int, size: int) -> np.ndarray:
    if arr.shape[-1] != channels:
        raise ValueError(f"the model's images have {channels} channel(s), got {arr.shape[-1]}")
    if arr.shape[1:3] != (size, size):
        raise ValueError(f"the model's images are {size}x{size} pixels, got {arr.shape[1]}x{arr.shape[2]}")
    return arr


def pixel_mask(mask: Any, n: int, size: int) -> np.ndarray:
    """bool [n, size, size], True = the pixel is to be generated."""
    if hasattr(mask, "convert") and hasattr(mask, "size"):  # a PIL image: nonzero = generate
        mask = to_uint8_image(mask, 1, "the mask")
    m = np.asarray(mask)
    if m.dtype.kind == "f":
        if not np.isfinite(m).all():
            raise ValueError("the mask must be finite")
        m = m > 0.5
    elif m.dtype.kind not in "biu":
        raise TypeError(f"the mask must be bool or numeric, got {m.dtype}")
    m = m != 0
    if m.ndim == 3 and m.shape[-1] in (1, 3) and m.shape[:2] == (size, size):  # an [H, W, C] picture
        m = m.any(-1)
    if m.ndim == 2:
        m = np.broadcast_to(m, (n, *m.shape))
    if m.ndim != 3 or m.shape != (n, size, size):
        raise ValueError(
            f"the mask must be [{size}, {size}] or [{n}, {size}, {size}] pixels (True = generate), got {list(m.shape)}"
        )
    return np.ascontiguousarray(m)


def load_mask(path: str | os.PathLike, n: int, size: int) -> np.ndarray:
    """A mask image file: white / nonzero = generate."""
    return pixel_mask(read_image(path, 1)[..., 0] > 127, n, size)


def token_mask(mask: np.ndarray, patch: int) -> np.ndarray:
    """bool [N, H, W] pixels to generate -> bool [N, L] tokens known (every pixel known), row-major."""
    n, h, w = mask.shape
    if h % patch or w % patch:
        raise ValueError(f"a {h}x{w} mask does not split into {patch}x{patch} tokens")
    cells = mask.reshape(n, h // patch, patch, w // patch, patch)
    return ~cells.any(axis=(2, 4)).reshape(n, -1)


def box_mask(box: Sequence[int], size: int) -> np.ndarray:
    """bool [size, size]: True inside box = (x0, y0, x1, y1) (x right, y down, end exclusive)."""
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {list(box)}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
        raise ValueError(f"the box {list(box)} must satisfy 0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size}")
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def pad_images(images: np.ndarray, padding: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, h, w, C] placed into a size x size canvas with padding (left, top,
    right, bottom): (canvas [N, size, size, C], mask [size, size] True where the padding is)."""
    if len(padding) != 4 or any(int(p) < 0 for p in padding):
        raise ValueError(f"padding is (left, top, right, bottom), non-negative, got {list(padding)}")
    left, top, right, bottom = (int(p) for p in padding)
    n, h, w, c = images.shape
    if (h + top + bottom, w + left + right) != (size, size):
        raise ValueError(
            f"images of {h}x{w} with padding {list(padding)} make {h + top + bottom}x{w + left + right}, "
            f"but the model's images are {size}x{size}"
        )
    canvas = np.zeros((n, size, size, c), np.uint8)
    canvas[:, top : top + h, left : left + w] = images
    mask = np.ones((size, size), bool)
    mask[top : top + h, left : left + w] = False
    return canvas, mask


def batches(known_mask: np.ndarray | None, n: int, size: int) -> list[np.ndarray]:
    """Index batches of at most `size` images, each with one number of known tokens (the MAR
    loop batches images whose known counts agree), in the images' order within a count."""
    counts = np.zeros(n, np.int64) if known_mask is None else np.asarray(known_mask).sum(1)
    groups = [np.flatnonzero(counts == c) for c in np.unique(counts)]
    return [g[i : i + size] for g in groups for i in range(0, len(g), size)]


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1] (what the tokenizers encode)."""
    return (images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(127.5) - np.float32(1)).astype(np.float32)


# ---------------------------------------------------------------- command-line editing
def add_edit_options(p: Any) -> None:
    """--images and one of --mask / --box / --padding / --region (marengine edit, the deploy sampler)."""
    p.add_argument("--images", nargs="+", default=None, help="image files to edit (one label each)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mask", default=None, help="mask image: white (nonzero) pixels are generated")
    corners, sides = ("X0", "Y0", "X1", "Y1"), ("LEFT", "TOP", "RIGHT", "BOTTOM")
    for flag, names, help in (
        ("--box", corners, "inpaint this box (pixels, end exclusive)"),
        ("--padding", sides, "outpaint: the images are placed inside the model's canvas with this padding"),
        ("--region", corners, "outpaint: keep this box of the images, generate the rest"),
    ):
        group.add_argument(flag, type=int, nargs=4, metavar=names, default=None, help=help)


def edit_inputs(args: Any, channels: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 images [N, size, size, C], pixel mask [N, size, size] True = generate) from the
    options of add_edit_options, or None when no --images were given."""
    if args.images is None:
        if any(getattr(args, k) is not None for k in ("mask", "box", "padding", "region")):
            raise ValueError("--mask/--box/--padding/--region edit images: give the images with --images")
        return None
    images = load_images(args.images, channels)
    n = images.shape[0]
    if args.padding is not None:
        canvas, mask = pad_images(images, args.padding, size)
        return canvas, pixel_mask(mask, n, size)
    check_images(images, channels, size)
    if args.mask is not None:
        return images, load_mask(args.mask, n, size)
    if args.box is not None:
        return images, pixel_mask(box_mask(args.box, size), n, size)
    if args.region is not None:
        return images, pixel_mask(~box_mask(args.region, size), n, size)
    raise ValueError("--images need a --mask, --box, --padding or --region saying what to generate")
