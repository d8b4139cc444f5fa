"""Training data: the embedded digits set, image folders (official center crop +
random flip), and VAE latents cached once to disk.

Every dataset yields (x, label) with x either an image [C, H, W] in [-1, 1]
(the tokenizer encodes it in the training step) or cached latents.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DigitsDataset(Dataset):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), scaled to [-1, 1].

    split: "all", "train" (even indices) or "heldout" (odd indices)."""

    def __init__(self, split: str = "all") -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32) / 8.0 - 1.0  # values 0..16 -> [-1, 1]
        y = d.target.astype(np.int64)
        sel = {"all": slice(None), "train": slice(0, None, 2), "heldout": slice(1, None, 2)}
        if split not in sel:
            raise ValueError(f"split must be one of {sorted(sel)}, got {split!r}")
        self.images = torch.from_numpy(x[sel[split]]).unsqueeze(1)  # [N, 1, 8, 8]
        self.labels = torch.from_numpy(y[sel[split]])
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


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
    return arr[top: top + size, left: left + size]


def scan_image_folder(root: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """root/<class>/<image> -> (paths, labels, class names); classes sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"data folder {root} has no class sub-folders: expected {root}/<class>/<image files>")
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise ValueError(f"data folder {root} holds no images ({', '.join(IMAGE_EXTS)}) in its class folders")
    return paths, labels, classes


class ImageFolderDataset(Dataset):
    """Images under root/<class>/, RGB in [-1, 1], [3, size, size].

    crop=True: the official center crop (any input size). crop=False: every image
    must already be size x size; other sizes are an error naming the files.
    Flip with probability 0.5 when `flip` (official random horizontal flip)."""

    def __init__(self, root: str | os.PathLike, size: int, crop: bool = True, flip: bool = True) -> None:
        from PIL import Image

        self.paths, self.labels, self.classes = scan_image_folder(root)
        self.size, self.crop, self.flip = size, crop, flip
        bad, unreadable = [], []
        for p in self.paths:
            try:
                with Image.open(p) as im:
                    w, h = im.size
            except Exception as e:  # PIL raises several types for broken files
                unreadable.append(f"{p} ({type(e).__name__})")
                continue
            if not crop and (w, h) != (size, size):
                bad.append(f"{p.name}: {w}x{h}")
        if unreadable:
            raise ValueError(f"{len(unreadable)} unreadable image(s) in {root}: {', '.join(unreadable[:5])}")
        if bad:
            raise ValueError(f"images of mixed sizes: {len(bad)} are not {size}x{size} ({', '.join(bad[:5])}); "
                             "resize them or train with center cropping enabled")
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            arr = center_crop(im, self.size) if self.crop else np.asarray(im)
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 127.5 - 1.0
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


class CachedLatentsDataset(Dataset):
    """VAE posterior moments cached by `cache_latents` ([N, 2, 2C, h, w]: original and
    flipped); each item picks one view at random and samples the posterior."""

    def __init__(self, path: str | os.PathLike, scale: float) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latent cache {path} not found: run `marengine cache-latents` first")
        d = load_file(path)
        self.moments, self.labels, self.scale = d["moments"], d["labels"], scale
        self.num_classes = int(d["num_classes"])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        m = self.moments[i, int(torch.rand(()) < 0.5)].float()
        mean, logvar = m.chunk(2, dim=0)
        z = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn_like(mean)
        return z * self.scale, int(self.labels[i])


@torch.no_grad()
def cache_latents(dataset: ImageFolderDataset, vae, out_path: str | os.PathLike,
                  batch_size: int = 32, device: str = "cpu") -> Path:
    """Encode every image (and its mirror) once; write moments + labels to a safetensors file."""
    from safetensors.torch import save_file

    from ..files import atomic_write

    flip = dataset.flip
    dataset.flip = False
    moments, labels = [], []
    try:
        for s in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
            x = torch.stack([it[0] for it in items]).to(device)
            both = torch.stack([vae.encode(x).moments, vae.encode(x.flip(-1)).moments], 1)
            moments.append(both.cpu())
            labels += [it[1] for it in items]
    finally:
        dataset.flip = flip
    out = Path(out_path)
    tensors = {"moments": torch.cat(moments).contiguous(), "labels": torch.tensor(labels),
               "num_classes": torch.tensor(dataset.num_classes)}
    atomic_write(out, lambda tmp: save_file(tensors, tmp))
    return out
