"""Where the time of an evaluation goes: images per second for generation (the trained 8x8
digits model, class-balanced, index-seeded blocks as `marengine evaluate` makes them) and for
Inception feature extraction (the FID Inception-v3 with random weights in the standard layout:
the same work as the real weights), and each one's share of the total.

Feature extraction is measured on the generated digits (grey, replicated to RGB) and on
256x256 RGB images (ImageNet's evaluation size); every image is resized to 299x299 first, so the
cost per image hardly depends on the input size.

    python benchmarks/bench_eval.py --quick --out eval.json
    python benchmarks/bench_eval.py --device cuda --images 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.models import trained_digits  # noqa: E402
from marengine.bench.script import add_cache_dir_arg, add_common_args, add_count_arg, print_table, run_main  # noqa: E402
from marengine.evaluation.features import features_of_batch  # noqa: E402
from marengine.evaluation.inception import InceptionV3FID  # noqa: E402
from marengine.sampling.balanced import balanced_labels, generate_indexed  # noqa: E402
from marengine.sampling.engine import SampleSettings  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_dir_arg(p)
    add_count_arg(p, "--images", None, "images per measurement (default: 10 quick, 60 full)")
    p.add_argument("--batch-size", type=int, default=64, help="images per Inception forward (default 64)")
    return p.parse_args(argv)


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    return run_main("eval", parse_args(argv), body)


def body(ctx, args: argparse.Namespace) -> None:
    n = args.images or (10 if ctx.mode == "quick" else 60)
    n = -(-n // 10) * 10  # whole classes
    model, tokenizer, info = trained_digits("digits8", ctx.mode, args.cache_dir)
    model, tokenizer = model.to(ctx.device), tokenizer.to(ctx.device)
    settings = SampleSettings(num_iter=16, cfg=2.0, batch_size=64)
    labels = balanced_labels(10, num_images=n)
    generate_indexed(model, tokenizer, labels[:10], settings)  # warm-up
    gen_s, images = timed(lambda: generate_indexed(model, tokenizer, labels, settings), ctx.device)

    inception = InceptionV3FID().to(ctx.device)  # default init: random weights, the real network's cost
    m = min(n, 4) if ctx.mode == "quick" else n  # quick: 4 images through the network (a CPU forward is ~0.5 s)
    rgb = np.repeat(images[:m], 3, axis=-1)  # [m, 8, 8, 3]
    big = np.random.default_rng(0).integers(0, 256, size=(m, 256, 256, 3), dtype=np.uint8)
    features_of_batch(inception, rgb[:2])  # warm-up

    def extract(x: np.ndarray):
        return [features_of_batch(inception, x[s : s + args.batch_size]) for s in range(0, len(x), args.batch_size)]

    feat_digits_s, _ = timed(lambda: extract(rgb), ctx.device)
    feat_big_s, _ = timed(lambda: extract(big), ctx.device)
    per_gen, per_feat = gen_s / n, feat_digits_s / m  # seconds per image
    rows = [
        {"stage": "generate (digits8, 16 it, cfg 2)", "images": n, "seconds": gen_s, "img_s": 1 / per_gen,
         "share": per_gen / (per_gen + per_feat)},
        {"stage": "Inception features (8x8 digits)", "images": m, "seconds": feat_digits_s, "img_s": 1 / per_feat,
         "share": per_feat / (per_gen + per_feat)},
        {"stage": "Inception features (256x256)", "images": m, "seconds": feat_big_s, "img_s": m / feat_big_s,
         "share": None},
    ]  # fmt: skip
    print_table(
        rows,
        ["stage", "images", "seconds", ("images/s", "img_s", ".3g", 8), "share"],
        title=f"evaluation on {ctx.device} ({ctx.threads} threads); share: of the time per image, generate + features",
    )
    names = ("generate", "features-digits", "features-256")
    for name, row in zip(names, rows):
        ctx.record(
            name,
            {
                "images": row["images"],
                "batch_size": args.batch_size,
                "model": "digits8",
                "trained_steps": info.get("train_steps"),
            },
            {"seconds": row["seconds"], "images_per_s": row["img_s"], "share_of_total": row["share"]},
            {"seconds": "s", "images_per_s": "img/s"},
            notes="random-weight Inception (same cost as the real weights)" if name != "generate" else "",
        )


if __name__ == "__main__":
    sys.exit(main())
