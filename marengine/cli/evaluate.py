"""`marengine evaluate`: FID / Inception Score of images or of a model's samples (torch-fidelity's
conventions), or the digits judge for a digits model when no Inception weights are given.

    marengine evaluate --checkpoint CK --num-images 50000 --inception-weights W.pth --ref-stats adm_in256_stats.npz
    torchrun --nproc_per_node=8 -m marengine evaluate ...   (the images are split between the ranks)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ..checks import check_int
from ..config import EVAL_DEFAULTS
from .balanced import add_balanced_options, check_balanced_options
from .common import add_checked, add_command, add_output_options, add_pipeline_options, load_pipeline, sample_settings

DEFAULT_PER_CLASS = 50  # the official evaluation: 50 images per class (FID-50K on ImageNet)
DIGITS_SIZES = (8, 16)  # the digits models' image sides (the judge's input, 16 pooled to 8)


def _refuse_existing(path: str | None, flag: str) -> Path | None:
    from ..files import check_output_file

    if path is None:
        return None
    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{flag} {p} exists; it is not overwritten: choose another path or remove it")
    return check_output_file(p)


def _check_args(args: argparse.Namespace) -> None:
    if (args.images is None) == (args.checkpoint is None):
        raise ValueError("give either --images PATH (a folder or npz) or --checkpoint CK (generate, then score)")
    if args.ref_stats and args.ref_images:
        raise ValueError("give one reference: --ref-stats FILE.npz or --ref-images PATH, not both")
    if (args.ref_stats or args.ref_images) and not args.inception_weights:
        raise ValueError(
            "FID needs the Inception weights: add --inception-weights FILE (weights-inception-2015-12-05-6726825d.pth)"
        )
    if args.save_stats and not args.inception_weights:
        raise ValueError("--save-stats writes Inception statistics: add --inception-weights FILE")
    if args.images is not None and args.save_images:
        raise ValueError("--save-images writes generated images: it needs --checkpoint")
    balanced = check_balanced_options(args)
    if args.checkpoint is not None and not balanced:
        args.per_class = DEFAULT_PER_CLASS
    if args.save_images and Path(args.save_images).exists() and any(Path(args.save_images).iterdir()):
        if not (Path(args.save_images) / ".marengine-eval").is_file():  # ours, from a run being resumed
            raise FileExistsError(
                f"--save-images {args.save_images} is not empty; it is not overwritten: choose a new folder"
            )


def _is_digits_model(model: Any) -> bool:
    return getattr(model, "num_classes", None) == 10 and getattr(model, "img_size", None) in DIGITS_SIZES


def cmd_evaluate(args: argparse.Namespace) -> int:

    from ..evaluation.images import open_images
    from ..evaluation.inception import POOL_DIM, load_inception
    from ..evaluation.metrics import MIN_IMAGES, load_stats
    from ..evaluation.run import (
        Scoring,
        dataset_producer,
        device_for,
        model_producer,
        run_shards,
        scores,
        write_saved_npz,
        write_stats,
    )
    from ..evaluation.shards import ShardStore
    from ..imageio import save_npz
    from ..training.distributed import barrier, init_distributed, shutdown
    from ..utils import resolve_device

    t0 = time.perf_counter()
    _check_args(args)
    out = _refuse_existing(args.out, "--out")
    _refuse_existing(args.save_stats, "--save-stats")
    _refuse_existing(args.save_features, "--save-features")
    settings = sample_settings(args) if args.checkpoint else None  # checked before any work
    device = resolve_device(args.device)
    info = init_distributed(device.type)
    try:
        device = device_for(info, device)
        labels, manifest = None, {"num_images": args.num_images, "per_class": args.per_class}
        if args.checkpoint:
            from ..sampling.balanced import balanced_labels

            pipe = load_pipeline(args, settings, device)
            model, tokenizer = pipe.model, pipe.tokenizer
            labels = balanced_labels(model.num_classes, args.num_images, args.per_class)
            judge = args.inception_weights is None
            if judge and not _is_digits_model(model):
                raise ValueError(
                    "this is not a digits model: FID needs --inception-weights FILE "
                    "(weights-inception-2015-12-05-6726825d.pth from torch-fidelity's release)"
                )
            save_dir = Path(args.save_images) if args.save_images else None
            if save_dir is not None:
                save_dir.mkdir(parents=True, exist_ok=True)
                (save_dir / ".marengine-eval").touch()
            produce = model_producer(model, tokenizer, labels, settings, save_dir)
            n, align = len(labels), settings.batch_size
            manifest.update(
                checkpoint=str(Path(args.checkpoint).resolve()),
                ema=not args.no_ema,
                save_images=args.save_images,
                settings=dataclasses.asdict(settings),
            )
        else:
            judge = args.inception_weights is None
            dataset = open_images(args.images, channels=(1, 3) if judge else (3,))
            labels = getattr(dataset, "labels", None)
            n = len(dataset) if args.num_images is None else min(args.num_images, len(dataset))
            if judge and not (hasattr(dataset, "shape") and dataset.shape[1] in DIGITS_SIZES):
                raise ValueError(
                    "these are not digits images: FID needs --inception-weights FILE "
                    "(weights-inception-2015-12-05-6726825d.pth from torch-fidelity's release)"
                )
            labels = None if labels is None else labels[:n]
            produce, align = dataset_producer(dataset), 1
            manifest.update(images=str(Path(args.images).resolve()))
        scoring = Scoring(batch_size=args.batch_size, workers=args.workers)
        if not judge:
            scoring.inception = load_inception(args.inception_weights, device)
            w = Path(args.inception_weights)
            manifest.update(inception=str(w.resolve()), inception_bytes=w.stat().st_size)
            if args.ref_stats:
                scoring.ref_stats = load_stats(args.ref_stats, POOL_DIM)
        if n < MIN_IMAGES:
            raise ValueError(f"{n} images: FID and IS need at least {MIN_IMAGES} (papers use 50,000)")
        ref = open_images(args.ref_images) if args.ref_images and not judge else None  # checked before the work
        manifest.update(scorer="digits-judge" if judge else "inception", shard_size=args.shard_size, n=n)
        work = args.work_dir or (f"{out}.shards" if out else None)
        store = None
        if work:
            if info.is_main:
                ShardStore(work, manifest, create=True)
            barrier(info)
            store = ShardStore(work, manifest, create=False)
        arrays, timings = run_shards(n, produce, scoring, info, store, args.shard_size, align, progress=info.is_main)
        barrier(info)
        if not info.is_main:
            return 0
        if ref is not None:
            from ..evaluation.features import extract_features

            scoring.ref_features = extract_features(
                scoring.inception, ref, args.batch_size, args.workers, progress=True, desc="reference features"
            )
        result = scores(arrays, scoring, labels)
        stats = result.pop("_stats", None)
        if args.save_stats:
            write_stats(args.save_stats, stats)
        if args.save_features and "pool" in arrays:
            save_npz(args.save_features, pool=arrays["pool"], logits_unbiased=arrays["logits"])
        if args.save_images:
            write_saved_npz(Path(args.save_images), labels)
            (Path(args.save_images) / ".marengine-eval").unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        report = {
            **result,
            "num_images": n,
            "scorer": "digits judge" if judge else "inception-v3 (torch-fidelity conventions)",
            "source": args.checkpoint or args.images,
            "sampling_settings": None if settings is None else dataclasses.asdict(settings),
            "reference": args.ref_stats or args.ref_images,
            "world_size": info.world_size,
            "seconds": seconds,
            "seconds_producing_rank0": timings.produce,
            "seconds_scoring_rank0": timings.score,
        }
        if out is not None:
            from ..files import atomic_write_text

            atomic_write_text(out, json.dumps(report, indent=2, default=float) + "\n")
        if store is not None and not args.keep_shards:
            store.remove()
        print(_one_line(report, out))
        return 0
    finally:
        shutdown(info)


def _one_line(r: dict[str, Any], out: Path | None) -> str:
    def num(x: Any, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    if "accuracy" in r:
        head = (
            f"digits judge: accuracy {100 * r['accuracy']:.1f}%, FD {r['fd']:.2f} (real floor {r['fd_real_floor']:.2f})"
        )
    else:
        head = (
            f"FID {num(r['fid'], '.4f')}, IS {num(r['inception_score_mean'], '.3f')} "
            f"± {num(r['inception_score_std'], '.3f')}"
        )
        if "precision" in r:
            head += f", precision {r['precision']:.3f}, recall {r['recall']:.3f}"
    tail = f" (report {out})" if out else ""
    return f"{head} on {r['num_images']} images in {r['seconds']:.0f} s{tail}"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", "FID / Inception Score of images or of a model's samples", cmd_evaluate)
    p.add_argument(
        "--images",
        default=None,
        help="score these: a folder of PNG/JPEG files, or an npz with arr_0 "
        "uint8 [N, H, W, 3] (ADM layout; labels for the digits judge)",
    )
    add_pipeline_options(p, required=False)
    add_balanced_options(
        p,
        num_images="images to generate, a multiple of the classes (refused otherwise); with --images: "
        "score the first N (default: all)",
        per_class=f"images per class to generate (instead of --num-images) (default: {DEFAULT_PER_CLASS} "
        "with --checkpoint)",
    )
    p.add_argument(
        "--save-images",
        default=None,
        help="new folder for the generated PNGs and samples.npz (arr_0 uint8 [N, H, W, C], labels) (default: not kept)",
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        help="torch-fidelity's weights-inception-2015-12-05-"
        "6726825d.pth (default: none; a digits model is then scored by the digits judge)",
    )
    p.add_argument(
        "--ref-stats",
        default=None,
        help="reference statistics npz with mu, sigma (e.g. ADM's adm_in256_stats.npz) (default: none, no FID)",
    )
    p.add_argument(
        "--ref-images",
        default=None,
        help="reference images (folder or npz) instead of --ref-stats; adds precision and recall (k=3)",
    )
    p.add_argument("--save-stats", default=None, help="write mu, sigma of the scored images to this new npz")
    p.add_argument(
        "--save-features",
        default=None,
        help="write the float32 features (pool [N, 2048], logits_unbiased [N, 1008]) to this new npz (default: none)",
    )
    add_output_options(
        p, "new report JSON file (default: none, the line is printed only)", required=False, overwrite=False
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="folder of resumable shards (default: OUT.shards when --out "
        "is given, else none); a rerun with the same arguments resumes from it",
    )
    p.add_argument("--keep-shards", action="store_true", help="keep the work folder after a finished run")
    d = EVAL_DEFAULTS
    shard = f"images per shard (default {d.shard_size}, rounded up to whole sampling batches)"
    add_checked(p, "--shard-size", check_int, d.shard_size, shard, lo=1)
    add_checked(p, "--batch-size", check_int, d.batch_size, "images per Inception forward", lo=1)
    add_checked(p, "--workers", check_int, d.workers, "image-decoding worker processes", lo=0)
