"""Input-pipeline throughput (items/s) beside the training step rate, measured in one run.

    python benchmarks/bench_data.py                          # CPU: 512 JPEGs, 4096 cached latents, workers 0/1/2
    python benchmarks/bench_data.py --workers 0 4 8 --device cuda --out data.json   # a GPU machine
    python benchmarks/bench_data.py --quick                  # 32 JPEGs, 128 latents, workers 0/1

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
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marengine.bench.script import Table, add_common_args, apply_quick, run_main  # noqa: E402
from marengine.bench.synthetic import MOMENTS, write_latent_cache  # noqa: E402
from marengine.bench.timing import Timer, summarize  # noqa: E402
from marengine.training.config import TrainConfig  # noqa: E402
from marengine.training.data import ImageFolderDataset  # noqa: E402
from marengine.training.latent_dataset import LatentCacheDataset  # noqa: E402
from marengine.training.loader import StepLoader  # noqa: E402
from marengine.training.trainer import Trainer  # noqa: E402

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
QUICK = {"images": 32, "latents": 128, "batch_size": 8, "workers": [0, 1], "train_steps": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, threads=1)  # the main process; DataLoader workers run one thread each
    p.add_argument("--images", type=int, default=512, help="JPEGs in the image folder (default 512)")
    p.add_argument("--src-size", type=int, nargs=2, default=(320, 256), help="JPEG width height (default 320 256)")
    p.add_argument("--img-size", type=int, default=256, help="training image size (default 256)")
    p.add_argument("--latents", type=int, default=4096, help="items in the latent cache (default 4096)")
    p.add_argument("--batch-size", type=int, default=32, help="items per batch (default 32)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers (default 0 1 2)")
    p.add_argument("--train-steps", type=int, default=5, help="timed training steps (default 5)")
    p.add_argument(
        "--with-vae",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time training from the folder with VAE encoding (default: on a GPU only)",
    )
    p.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    return apply_quick(p, p.parse_args(argv), QUICK)


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


def pipeline_rate(source, batch_size: int, steps: int, workers: int, pin: bool) -> dict[str, Any]:
    loader = StepLoader(source, batch_size, seed=0, max_steps=steps, num_workers=workers, pin_memory=pin)
    timer = Timer("cpu")
    first, _ = timer(lambda: loader.batch(0))  # worker start-up
    seconds, items = timer(lambda: sum(len(loader.batch(s).x) for s in range(1, steps)))
    loader.close()
    return {"items_per_s": items / seconds, "first_batch_s": first, "items": items}


def train_rate(cfg: TrainConfig, steps: int, warmup: int) -> dict[str, Any]:
    t = Trainer(cfg)
    try:
        batches = [t.load_batch(s) for s in range(warmup + steps)]  # data ready: only the step is timed
        timer = Timer(t.device)
        times = [timer(lambda x=x, y=y: t.train_step(x, y))[0] for x, y in batches][warmup:]
    finally:
        t.close()
    med = summarize(times)["p50"]
    return {"items_per_s": cfg.batch_size / med, "ms_per_step": 1e3 * med}


def body(ctx, args: argparse.Namespace) -> None:
    pin = ctx.device.type == "cuda"
    table = Table(
        ["what", "items_per_s", (f"vs {args.workers[0]} workers", "ratio", ".2f", 13)]
        + [("first batch s", "first_batch_s", ".2f", 13), ("ms/step", "ms_per_step", ".0f", 8)]
    )
    base: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        make_images(folder, args.images, tuple(args.src_size))
        write_latent_cache(cache, args.latents, classes=4)
        sources = {"image folder": ImageFolderDataset(folder, args.img_size), "latent cache": LatentCacheDataset(cache)}
        for name, src in sources.items():
            steps = len(src) // args.batch_size
            for w in args.workers:
                r = pipeline_rate(src, args.batch_size, steps, w, pin)
                base.setdefault(name, r["items_per_s"])
                r["ratio"] = r["items_per_s"] / base[name]
                params = {"source": name, "workers": w, "batch_size": args.batch_size, "items_in_source": len(src)}
                ctx.record(f"pipeline/{name.replace(' ', '-')}/w{w}", params, r, {"first_batch_s": "s"})
                table.add({"what": f"{name}, {w} workers", **r})
        common = {
            "model": "mar_tiny",
            "batch_size": args.batch_size,
            "device": str(ctx.device),
            "progress": False,
            "out_dir": str(Path(tmp) / "run"),
            "max_steps": 10**6,
        }
        train = {
            "train step, latents in": TrainConfig(data=str(cache), tokenizer="vae", model_overrides=SMALL, **common)
        }
        if args.with_vae if args.with_vae is not None else ctx.device.type == "cuda":
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
            r = train_rate(cfg, args.train_steps, warmup=2)
            params = {"source": name, "batch_size": args.batch_size, "train_steps": args.train_steps}
            ctx.record(f"train/{'vae' if 'VAE' in name else 'latents'}", params, r, {"ms_per_step": "ms"})
            table.add({"what": name, **r})
    print(
        f"\nbatch {args.batch_size}, {args.images} JPEGs {args.src_size[0]}x{args.src_size[1]} -> {args.img_size}, "
        f"{args.latents} latents {list(MOMENTS)} float32; the pipeline keeps up when its items/s exceed the step's"
    )


def main(argv: list[str] | None = None) -> int:
    return run_main("data", parse_args(argv), body)


if __name__ == "__main__":
    sys.exit(main())
