"""One evaluation, from images or from a model, on one process or many (torchrun).

The N images are cut into shards (evaluation.shards); shard k belongs to rank k mod world. Each
rank makes its shards' images (generated block by block with index-seeded noise, or read from a
folder / npz), reduces them to what the score needs (Inception features; the images themselves for
the digits judge) and writes each shard atomically to the work folder. The results, not the
images, are gathered to rank 0, which computes the scores in index order, so the numbers do not
depend on the number of ranks, and a killed run resumes to the same numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..config import EVAL_DEFAULTS
from ..training.distributed import DistInfo
from . import digits
from .features import Features, extract_features, features_of_batch
from .images import save_png, write_adm_npz
from .inception import InceptionV3FID
from .metrics import check_count, fid_statistics, frechet_distance, inception_score, precision_recall, save_stats
from .shards import ShardStore, shard_ranges

log = logging.getLogger("marengine.evaluation")

# a producer makes the images [start, stop): a uint8 array [n, H, W, C] or a Dataset of [C, H, W] items
Producer = Callable[[int, int], Any]


@dataclass
class Scoring:
    """What the images are scored with: the Inception network (and a reference), or the digits judge."""

    inception: InceptionV3FID | None = None  # None: the digits judge
    ref_stats: tuple[np.ndarray, np.ndarray] | None = None  # (mu, sigma) of the reference
    ref_features: Features | None = None  # reference images' features (FID and precision/recall)
    batch_size: int = EVAL_DEFAULTS.batch_size
    workers: int = EVAL_DEFAULTS.workers


@dataclass
class Timings:
    produce: float = 0.0  # generating or decoding images
    score: float = 0.0  # feature extraction
    images: int = 0  # images this rank made in this run (resumed shards not counted)


def _as_rgb(images: np.ndarray) -> np.ndarray:
    """Generated grey images [n, H, W, 1] -> [n, H, W, 3], as saving a PNG and reading it as RGB does."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _reduce(scoring: Scoring, images: Any, timings: Timings) -> dict[str, np.ndarray]:
    """A shard's images -> the arrays stored for it."""
    t0 = time.perf_counter()
    if scoring.inception is None:  # the judge scores the images themselves (digits: 64 bytes each)
        arr = images if isinstance(images, np.ndarray) else np.stack([x.permute(1, 2, 0).numpy() for x in images])
        out = {"images": arr}
    elif isinstance(images, np.ndarray):
        rgb = _as_rgb(images)
        parts = [
            features_of_batch(scoring.inception, rgb[s : s + scoring.batch_size])
            for s in range(0, len(rgb), scoring.batch_size)
        ]
        f = Features.concat(parts)
        out = {"pool": f.pool, "logits": f.logits}
    else:
        f = extract_features(scoring.inception, images, scoring.batch_size, scoring.workers)
        out = {"pool": f.pool, "logits": f.logits}
    timings.score += time.perf_counter() - t0
    return out


def run_shards(
    n: int,
    produce: Producer,
    scoring: Scoring,
    info: DistInfo,
    store: ShardStore | None,
    shard_size: int = EVAL_DEFAULTS.shard_size,
    align: int = 1,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray] | None, Timings]:
    """This rank's shards (made, or read back when already in the store), gathered to rank 0:
    rank 0 gets every stored array concatenated in index order; the other ranks get None."""
    shards = shard_ranges(n, shard_size, align)
    mine = shards[info.rank :: info.world_size]
    timings = Timings()
    results: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    bar = tqdm(total=sum(b - a for a, b in mine), desc="evaluating", unit="img", disable=not progress)
    for start, stop in mine:
        if store is not None and store.done(start, stop):
            results[(start, stop)] = store.load(start, stop)
        else:
            t0 = time.perf_counter()
            images = produce(start, stop)
            timings.produce += time.perf_counter() - t0
            results[(start, stop)] = _reduce(scoring, images, timings)
            timings.images += stop - start
            if store is not None:
                store.save(start, stop, **results[(start, stop)])
        bar.update(stop - start)
    bar.close()
    gathered = _gather(results, info)
    if gathered is None:
        return None, timings
    ordered = [gathered[s] for s in shards]
    return {k: np.concatenate([r[k] for r in ordered]) for k in ordered[0]}, timings


def _gather(results: dict, info: DistInfo) -> dict | None:
    if not info.enabled:
        return results
    everything = [None] * info.world_size if info.is_main else None
    dist.gather_object(results, everything, dst=0)
    if not info.is_main:
        return None
    merged: dict = {}
    for part in everything:
        merged.update(part)
    return merged


def scores(arrays: dict[str, np.ndarray], scoring: Scoring, labels: np.ndarray | None) -> dict[str, Any]:
    """The report's figures from the gathered arrays."""
    if scoring.inception is None:
        if labels is None:
            raise ValueError("the digits judge needs the images' labels: give an npz with a labels array")
        r = digits.evaluate(arrays["images"], labels)
        return {
            "accuracy": r.accuracy,
            "fd": r.fd_samples,
            "fd_real_floor": r.fd_real,
            "judge_accuracy_on_real": r.classifier_accuracy,
        }
    pool, logits = arrays["pool"], arrays["logits"]
    check_count(len(pool))
    out: dict[str, Any] = {"fid": None}
    mu, sigma = fid_statistics(pool)
    if scoring.ref_stats is not None:
        out["fid"] = frechet_distance(mu, sigma, *scoring.ref_stats)
    elif scoring.ref_features is not None:
        out["fid"] = frechet_distance(mu, sigma, *fid_statistics(scoring.ref_features.pool))
    if len(logits) >= EVAL_DEFAULTS.isc_splits:
        out["inception_score_mean"], out["inception_score_std"] = inception_score(logits)
    else:
        out["inception_score_mean"] = out["inception_score_std"] = None
    if scoring.ref_features is not None:
        out["precision"], out["recall"] = precision_recall(scoring.ref_features.pool, pool)
    out["_stats"] = (mu, sigma)
    return out


def dataset_producer(dataset: Any) -> Producer:
    return lambda start, stop: Subset(dataset, range(start, stop))


def model_producer(model: Any, tokenizer: Any, labels: np.ndarray, settings: Any, save_dir: Path | None) -> Producer:
    """Images [start, stop) generated block by block (sampling.balanced), PNGs written to save_dir."""
    from ..sampling.balanced import generate_blocks

    bs = settings.batch_size

    def produce(start: int, stop: int) -> np.ndarray:
        starts = list(range(start, stop, bs))
        images = np.concatenate([im for _, im in generate_blocks(model, tokenizer, labels, settings, starts)])
        if save_dir is not None:
            for i, im in enumerate(images):
                save_png(save_dir / png_name(start + i), im)
        return images

    return produce


def png_name(index: int) -> str:
    return f"{index:06d}.png"


def write_saved_npz(save_dir: Path, labels: np.ndarray, progress: bool = True) -> Path:
    """save_dir/samples.npz in ADM's layout (arr_0 uint8 [N, H, W, C], labels [N]) from the PNGs."""
    from PIL import Image

    def read(i: int) -> np.ndarray:
        with Image.open(save_dir / png_name(i)) as im:
            a = np.asarray(im)
        return a[..., None] if a.ndim == 2 else a

    first = read(0)

    def chunks() -> Iterator[np.ndarray]:
        for s in tqdm(range(0, len(labels), 256), desc="writing npz", disable=not progress):
            yield np.stack([read(i) for i in range(s, min(s + 256, len(labels)))])

    return write_adm_npz(save_dir / "samples.npz", chunks(), (len(labels), *first.shape), labels)


def write_stats(path: str, stats: tuple[np.ndarray, np.ndarray]) -> Path:
    return save_stats(path, *stats)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """Under torchrun each rank takes the GPU of its local rank."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device
