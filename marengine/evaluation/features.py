"""Inception features of image sets in batches: files are decoded by DataLoader workers while the
network runs; images of several sizes in one batch are resized in groups of equal size."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import EVAL_DEFAULTS
from .inception import InceptionV3FID


@dataclass
class Features:
    pool: np.ndarray  # float32 [N, 2048]: FID, precision/recall
    logits: np.ndarray  # float32 [N, 1008]: Inception Score (unbiased)

    @staticmethod
    def concat(parts: list[Features]) -> Features:
        return Features(
            np.concatenate([p.pool for p in parts]) if parts else np.zeros((0, 2048), np.float32),
            np.concatenate([p.logits for p in parts]) if parts else np.zeros((0, 1008), np.float32),
        )


def _keep_list(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


@torch.no_grad()
def features_of_batch(model: InceptionV3FID, images: list[torch.Tensor] | torch.Tensor | np.ndarray) -> Features:
    """uint8 images ([N, 3, H, W] tensor, [N, H, W, 3] array, or a list of [3, H, W] of any sizes) ->
    Features in their order."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        pool, logits = model(images)
        return Features(pool.cpu().numpy(), logits.cpu().numpy())
    pool = torch.empty(len(images), 2048)
    logits = torch.empty(len(images), 1008)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(tuple(im.shape), []).append(i)
    for idx in by_shape.values():
        p, lg = model(torch.stack([images[i] for i in idx]))
        pool[idx], logits[idx] = p.cpu(), lg.cpu()
    return Features(pool.numpy(), logits.numpy())


def extract_features(
    model: InceptionV3FID,
    images: Dataset | np.ndarray,
    batch_size: int = EVAL_DEFAULTS.batch_size,
    workers: int = EVAL_DEFAULTS.workers,
    progress: bool = False,
    desc: str = "Inception features",
) -> Features:
    """Features of an image Dataset (items uint8 [3, H, W]) or a uint8 array [N, H, W, 3]."""
    if isinstance(images, np.ndarray):
        parts = []
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
            parts.append(features_of_batch(model, images[s : s + batch_size]))
        return Features.concat(parts)
    workers = min(workers, os.cpu_count() or 1) if len(images) > batch_size else 0
    loader = DataLoader(
        images,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_keep_list,
        pin_memory=model.device.type == "cuda",
        persistent_workers=False,
    )
    parts = []
    with tqdm(total=len(images), desc=desc, disable=not progress, unit="img") as bar:
        for batch in loader:
            parts.append(features_of_batch(model, batch))
            bar.update(len(batch))
    return Features.concat(parts)
