"""Input-pipeline throughput (items/s) beside the training step rate, measured in one run.

    python benchmarks/bench_data.py                          # CPU: 512 JPEGs, 4096 cached latents, workers 0/1/2
    python benchmarks/bench_data.py --workers 0 4 8 --device cuda --out data.json   # a GPU machine

Makes its own data in a temporary folder: JPEG images (--src-size, center-cropped to
--img-size as training does) and a sharded latent cache of the KL-16 shape at 256 px
([2, 32, 16, 16] per item; synthetic moments, the read path is what is measured). Then:
  pipeline  batches/s x batch size through `StepLoader` (the trainer's DataLoader: seeded
            items, collate), for the image folder and the latent cache, per worker count;
            the time to the first batch (worker start-up) is reported apart;
  train     the training step rate of a small MAR (mar_tiny widths at 256 px) on the same
            data: from the cache (latents in, as `--data CACHE`), and with --with-vae (the
            default on a GPU) from the folder through a KL-16 VAE of the official size
            (random weights: the cost is the same) encoding each batch in the step.
The input pipeline keeps up when its items/s exceeds the training step's items/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from marengine.config import VAE_LATENT_SCALE
from marengine.training.config import TrainConfig
from marengine.training.data import ImageFolderDataset
from marengine.training.latent_cache import LatentCacheWriter
from marengine.training.latent_dataset import LatentCacheDataset
from marengine.training.loader import StepLoader
from marengine.training.trainer import Trainer

MOMENTS = (2, 32, 16, 16)
SMALL = {
    "img_size": 256,
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 4,
    "decoder_embed_dim": 64,
    "decoder_depth": 2,
    "decoder_num_heads": 4,
    "diffloss_w": 96,
    "diffloss_d": 2,
}


def make_images(root: Path, n: int, src: tuple[int, int], classes: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = src
    base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    for i in range(n):
        (root / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
        small = np.roll(base, i, axis=1)  # smooth content (upsampled) compresses like a photo, not like noise
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        img.save(root / f"c{i % classes}" / f"{i:05d}.jpg", quality=90)


def make_cache(folder: Path, n: int, classes: int = 4) -> None:
    settings = {
        "synthetic": True,
        "scale": VAE_LATENT_SCALE,
        "moments_shape": list(MOMENTS),
        "dtype": "float32",
        "num_classes": classes,
        "class_names": [str(c) for c in range(classes)],
        "num_items": n,
        "shard_size": 1024,
    }
    w = LatentCacheWriter(folder, settings)
    w.prepare()
    rng = np.random.default_rng(0)
    for i in w.pending():
        k = len(w.item_range(i))
        moments = rng.standard_normal((k, *MOMENTS), dtype=np.float32)
        moments[:, :, MOMENTS[1] // 2 :] = -4.0
        w.write(i, rng.integers(0, classes, k), moments)
    w.finalize()


def pipeline_rate(source, batch_size: int, steps: int, workers: int, pin: bool) -> dict:
    loader = StepLoader(source, batch_size, seed=0, max_steps=steps, num_workers=workers, pin_memory=pin)
    t0 = time.perf_counter()
    loader.batch(0)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    items = 0
    for s in range(1, steps):
        items += len(loader.batch(s).x)
    dt = time.perf_counter() - t1
    loader.close()
    return {"items_per_s": items / dt, "first_batch_s": first, "items": items}


def train_rate(cfg: TrainConfig, steps: int, warmup: int) -> dict:
    t = Trainer(cfg)
    try:
        batches = [t.load_batch(s) for s in range(warmup + steps)]  # data ready: only the step is timed
        times = []
        for i, (x, y) in enumerate(batches):
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            t.train_step(x, y)
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        t.close()
    return {"items_per_s": cfg.batch_size / statistics.median(times), "ms_per_step": 1e3 * statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--src-size", type=int, nargs=2, default=(320, 256), help="JPEG width height")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--with-vae",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time training from the folder with VAE encoding (default: on a GPU only)",
    )
    ap.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the main process; DataLoader workers run one thread each
    pin = device.type == "cuda"
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        make_images(folder, args.images, tuple(args.src_size))
        make_cache(cache, args.latents)
        sources = {"image folder": ImageFolderDataset(folder, args.img_size), "latent cache": LatentCacheDataset(cache)}
        rows = []
        for name, src in sources.items():
            steps = len(src) // args.batch_size
            for w in args.workers:
                r = pipeline_rate(src, args.batch_size, steps, w, pin)
                rows.append({"what": f"{name}, {w} workers", **r})
                print(
                    f"{rows[-1]['what']:<32} {r['items_per_s']:9.0f} items/s  (first batch {r['first_batch_s']:.2f} s)",
                    flush=True,
                )
        common = {
            "model": "mar_tiny",
            "batch_size": args.batch_size,
            "device": args.device,
            "progress": False,
            "out_dir": str(Path(tmp) / "run"),
            "max_steps": 10**6,
        }
        warm = 2
        train = {
            "train step, latents in": TrainConfig(data=str(cache), tokenizer="vae", model_overrides=SMALL, **common)
        }
        if args.with_vae if args.with_vae is not None else device.type == "cuda":
            from marengine.models.vae import AutoencoderKL

            torch.save({"model": AutoencoderKL(16).state_dict()}, Path(tmp) / "kl16-random.ckpt")
            train["train step, images in (VAE)"] = TrainConfig(
                data=str(folder),
                tokenizer="vae",
                model_overrides=SMALL,
                vae_ckpt=str(Path(tmp) / "kl16-random.ckpt"),
                **common,
            )
        for name, cfg in train.items():
            r = train_rate(cfg, args.train_steps, warm)
            rows.append({"what": name, **r})
            print(f"{name:<32} {r['items_per_s']:9.0f} items/s  ({r['ms_per_step']:.0f} ms/step)", flush=True)
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"\nbatch {args.batch_size}, {args.images} JPEGs {args.src_size[0]}x{args.src_size[1]} -> {args.img_size}, "
        f"{args.latents} latents {list(MOMENTS)} float32, on {dev}; "
        f"loadavg {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    base = {"image folder": rows[0]["items_per_s"], "latent cache": rows[len(args.workers)]["items_per_s"]}
    print(f"{'what':<32} {'items/s':>9} {f'vs {args.workers[0]} workers':>13}")
    for r in rows:
        ref = next((v for k, v in base.items() if r["what"].startswith(k)), None)
        ratio = f"{r['items_per_s'] / ref:12.2f}x" if ref else f"{'-':>13}"
        print(f"{r['what']:<32} {r['items_per_s']:>9.0f} {ratio}")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "device": dev,
                    "args": vars(args),
                    "loadavg_before": load0,
                    "loadavg_after": os.getloadavg(),
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
