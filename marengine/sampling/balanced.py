"""Class-balanced generation for evaluation, with each image's noise fixed by its index.

Labels: `per_class` images of every class, in class order ([0]*K + [1]*K + ...), as the official
evaluation lays them out (`np.arange(num_classes).repeat(K)`).

Noise: the images are cut into blocks of `settings.batch_size` consecutive indices; block b (images
[b*B, (b+1)*B)) is generated as one batch with its own torch.Generator seeded by
`block_seed(settings.seed, b*B)`. So image i depends on (seed, batch size, i) only: not on how the
blocks are split between processes, in which order they run, or whether a run was resumed.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np
import torch

from ..checks import check_int
from ..models.tokenizers import to_uint8
from .engine import SampleSettings, generate_latents


def balanced_labels(num_classes: int, num_images: int | None = None, per_class: int | None = None) -> np.ndarray:
    """int64 [num_classes * per_class]: each class `per_class` times, in class order. Give one of
    num_images (must divide into the classes: 50,000 images of 1,000 classes is 50 per class) or per_class."""
    check_int("num_classes", num_classes, lo=1)
    if (num_images is None) == (per_class is None):
        raise ValueError("give either the number of images or the images per class, not both")
    if num_images is not None:
        check_int("--num-images", num_images, lo=1)
        per_class, rem = divmod(num_images, num_classes)
        if rem or per_class == 0:
            lo, hi = per_class * num_classes, (per_class + 1) * num_classes
            nearest = f"{lo} or {hi}" if lo else f"{hi}"
            raise ValueError(
                f"--num-images {num_images} does not divide into the model's {num_classes} classes "
                f"(class-balanced generation): use {nearest}, or --per-class K"
            )
    check_int("--per-class", per_class, lo=1)
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


def block_seed(seed: int, first_index: int) -> int:
    """The generator seed of the block that starts at image `first_index`: the first 8 bytes of
    sha256(f"{seed}:{first_index}") as a little-endian integer, top bit cleared."""
    digest = hashlib.sha256(f"{seed}:{first_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def blocks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] of the generation blocks of n images."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


@torch.no_grad()
def generate_blocks(
    model: Any, tokenizer: Any, labels: np.ndarray, settings: SampleSettings, starts: list[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, uint8 images [n, H, W, C]) for each block (all, or those starting at `starts`),
    each generated from its own seeded generator."""
    device = model.fake_latent.device
    todo = blocks(len(labels), settings.batch_size)
    if starts is not None:
        wanted = set(starts)
        todo = [b for b in todo if b[0] in wanted]
    for start, stop in todo:
        gen = torch.Generator(device=device).manual_seed(block_seed(settings.seed, start))
        latents = generate_latents(
            model, labels[start:stop].tolist(), settings, bounded=getattr(tokenizer, "bounded", False), generator=gen
        )
        yield start, to_uint8(tokenizer.decode(latents)).cpu().numpy()


def generate_indexed(model: Any, tokenizer: Any, labels: np.ndarray, settings: SampleSettings) -> np.ndarray:
    """uint8 [N, H, W, C]: all images, block by block (the same images as any split of the blocks)."""
    parts = [images for _, images in generate_blocks(model, tokenizer, labels, settings)]
    return np.concatenate(parts) if parts else np.zeros((0, 1, 1, 1), np.uint8)
