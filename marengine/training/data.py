"""Training data: the embedded digits set and image folders (official center crop +
random flip); the sharded VAE latent cache is in `latent_cache.py`.

Every dataset has `get(index, generator) -> (x, label)`, with x an image
[C, H, W] in [-1, 1] (the tokenizer encodes it in the training step) or cached
latents, and with its random choices drawn from `generator` (see `sampler.py`).
An image folder returns a `BadItem` for a file it cannot use instead of
raising: `collate_items` drops it and the trainer reports it, so one corrupt
file never stops a run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..imageio import open_image, to_uint8_image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DigitsDataset(Dataset):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), scaled to [-1, 1].

    split: "all", "train" (even indices) or "heldout" (odd indices). size: 8, or 16 for the
    digits upsampled once here by pixel repetition (nearest, each pixel a 2x2 block, so that
    2x2 average pooling gives the 8x8 digit back exactly; data "digits16")."""

    def __init__(self, split: str = "all", size: int = 8) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32) / 8.0 - 1.0  # values 0..16 -> [-1, 1]
        y = d.target.astype(np.int64)
        sel = {"all": slice(None), "train": slice(0, None, 2), "heldout": slice(1, None, 2)}
        if split not in sel:
            raise ValueError(f"split must be one of {sorted(sel)}, got {split!r}")
        if size not in (8, 16):
            raise ValueError(f"digits come at size 8 or 16 (upsampled), got {size}")
        self.images = torch.from_numpy(x[sel[split]]).unsqueeze(1)  # [N, 1, 8, 8]
        if size == 16:
            self.images = self.images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # [N, 1, 16, 16]
        self.labels = torch.from_numpy(y[sel[split]])
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, i: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])  # no random augmentation

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.get(i)


def center_crop(img, size: int):
    """The official (ADM) crop: halve with BOX while large, resize the short side to
    `size` with BICUBIC, then crop the center."""
    from PIL import Image

    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def _image_files(folder: str) -> list[tuple[str, ...]]:
    """Relative paths (as tuples of parts) of the image files under `folder`, names only (no file is opened)."""
    found: list[tuple[str, ...]] = []
    stack: list[tuple[str, tuple[str, ...]]] = [(folder, ())]
    while stack:
        path, parts = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                if e.is_dir():
                    stack.append((e.path, (*parts, e.name)))
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
                    found.append((*parts, e.name))
    return sorted(found)  # the order Path sorting gives (part by part)


def scan_image_folder(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """root/<class>/<image> -> (relative file names [N] (bytes), labels [N] (int64), class names).

    Classes are sorted by name, files by path; only names are read, so this is
    quick even for ImageNet (1.28 M files). Names are kept in one numpy array, not
    a list of Python objects, so forked DataLoader workers do not copy them."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist or is not a folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise ValueError(f"data folder {root} has no class sub-folders: expected {root}/<class>/<image files>")
    names: list[bytes] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        files = [os.fsencode(os.path.join(c, *parts)) for parts in _image_files(str(root / c))]
        names += files
        labels += [i] * len(files)
    if not names:
        raise ValueError(f"data folder {root} holds no images ({', '.join(IMAGE_EXTS)}) in its class folders")
    return np.array(names, dtype=np.bytes_), np.array(labels, dtype=np.int64), classes


@dataclass(frozen=True)
class BadItem:
    """An item that could not be loaded: what the dataset yields instead of raising."""

    path: str
    reason: str


class ImageFolderDataset(Dataset):
    """Images under root/<class>/, RGB in [-1, 1], [3, size, size].

    Construction lists file names only; a file is opened when its item is
    loaded, and one that cannot be decoded gives a `BadItem`. crop=True: the
    official center crop (any input size). crop=False: every image must already
    be size x size; another size is a `BadItem` naming the file and its size.
    Flip with probability 0.5 when `flip` (official random horizontal flip),
    drawn from the item's generator. `marengine check-data` opens every file up
    front."""

    def __init__(self, root: str | os.PathLike, size: int, crop: bool = True, flip: bool = True) -> None:
        self.root = Path(root)
        self.names, self.labels, self.classes = scan_image_folder(root)
        self.size, self.crop, self.flip = size, crop, flip
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.names[i])

    def load(self, i: int) -> np.ndarray | BadItem:  # [size, size, 3] uint8
        path = self.path(i)
        try:
            im = open_image(path)  # decodes the whole file: truncated data and decompression bombs fail here
            if not self.crop and im.size != (self.size, self.size):
                return BadItem(
                    str(path),
                    f"{im.size[0]}x{im.size[1]}, not {self.size}x{self.size}; resize it "
                    "or train with center cropping (--crop)",
                )
            im = to_uint8_image(im, 3, str(path))  # 16-bit, palette and alpha images as editing reads them
            arr = center_crop(im, self.size) if self.crop else np.asarray(im)
        except Exception as e:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, ... for broken files)
            return BadItem(str(path), str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
        return np.array(arr, dtype=np.uint8)  # a writable, contiguous copy

    def get(self, i: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int] | BadItem:
        arr = self.load(i)
        if isinstance(arr, BadItem):
            return arr
        x = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0  # [3, size, size]
        if self.flip and torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | BadItem:
        return self.get(i)


class Batch(NamedTuple):
    """A collated batch; x and y are None when every item was bad."""

    x: torch.Tensor | None  # [B, ...]
    y: torch.Tensor | None  # [B] int64
    bad: list[BadItem]  # the items dropped from it


def collate_items(items: Sequence[tuple[torch.Tensor, int] | BadItem]) -> Batch:
    """Stack the good items; drop (and list) the bad ones."""
    good = [it for it in items if not isinstance(it, BadItem)]
    bad = [it for it in items if isinstance(it, BadItem)]
    if not good:
        return Batch(None, None, bad)
    x = torch.stack([it[0] for it in good])
    y = torch.tensor([it[1] for it in good], dtype=torch.int64)
    return Batch(x, y, bad)


class ItemView(Dataset):
    """A map-style view of `source` for a DataLoader: item i is `source.<method>(i)`, with no
    generator (no augmentation draws)."""

    def __init__(self, source: ImageFolderDataset, method: str) -> None:
        self.source, self.method = source, method

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return getattr(self.source, self.method)(i)


def _bad_items(items: Sequence[np.ndarray | BadItem]) -> list[BadItem]:
    return [it for it in items if isinstance(it, BadItem)]


def check_image_folder(
    dataset: ImageFolderDataset, num_workers: int = 0, batch_size: int = 64, progress: bool = False
) -> list[BadItem]:
    """Open, decode and crop every image as training would; return the ones that fail."""
    loader = DataLoader(
        ItemView(dataset, "load"),  # decode and crop, no augmentation
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_bad_items,
    )
    bad: list[BadItem] = []
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="check", unit="batch", dynamic_ncols=True)
    for b in loader:
        bad += b
    return bad
