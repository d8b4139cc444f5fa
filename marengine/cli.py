"""Command line: marengine train | sample | demo | cache-latents | check-data | export-onnx.

Training flags are generated from `TrainConfig`, so defaults live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .config import SAMPLE_DEFAULTS
from .schedules import CFG_SCHEDULES
from .training.config import DEMO, TrainConfig

DEMO_SAMPLING = {"num_iter": 16, "cfg": 2.0, "temperature": 1.0}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_flags(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, dict):
            p.add_argument(_flag(f.name), type=json.loads, default=default, help="JSON object")
        elif isinstance(default, tuple):
            p.add_argument(_flag(f.name), type=float, nargs=len(default), default=default)
        elif default is None:
            p.add_argument(_flag(f.name), type=float if f.name == "lr" else str, default=None)
        else:
            p.add_argument(_flag(f.name), type=type(default), default=default)


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict({f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def add_sample_flags(p: argparse.ArgumentParser, defaults: dict[str, Any], seed_flag: str = "--seed") -> None:
    p.add_argument("--num-iter", type=int, default=defaults.get("num_iter", SAMPLE_DEFAULTS.num_iter))
    p.add_argument("--cfg", type=float, default=defaults.get("cfg", SAMPLE_DEFAULTS.cfg))
    p.add_argument("--cfg-schedule", choices=CFG_SCHEDULES, default=SAMPLE_DEFAULTS.cfg_schedule)
    p.add_argument("--temperature", type=float, default=defaults.get("temperature", SAMPLE_DEFAULTS.temperature))
    p.add_argument(seed_flag, dest="sample_seed", type=int, default=0, help="sampling seed")
    p.add_argument("--sample-batch-size", type=int, default=64)
    p.add_argument("--backend", choices=("auto", "torch", "native"), default="auto")
    p.add_argument(
        "--clip-denoised",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clamp x_0 predictions to [-1, 1] (default: on for pixel tokens, off for VAE latents)",
    )


def _settings(args: argparse.Namespace):
    from .sampling.engine import SampleSettings

    return SampleSettings(
        args.num_iter,
        args.cfg,
        args.cfg_schedule,
        args.temperature,
        args.sample_seed,
        args.sample_batch_size,
        args.backend,
        args.clip_denoised,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .training.trainer import train

    out = train(train_config_from(args))
    print(
        f"trained {out['step']} steps ({out['skipped']} skipped); checkpoint {Path(args.out_dir) / 'last.pth'}, "
        f"EMA model {Path(args.out_dir) / 'ema'}"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .imageio import save_samples
    from .models.loading import load_model
    from .models.tokenizers import build_tokenizer
    from .sampling.engine import generate

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(
        args.checkpoint, config=args.model, use_ema=not args.no_ema, vae_ckpt=args.vae_ckpt, device=device
    )
    if loaded.tokenizer_spec is None:
        raise ValueError(f"{args.checkpoint}: no tokenizer fits this model's latents; images cannot be decoded")
    model, tokenizer = loaded.model, build_tokenizer(loaded.tokenizer_spec).to(device)
    labels = args.labels if args.labels else list(range(model.num_classes))
    images = generate(model, tokenizer, labels, _settings(args), progress=True)
    paths = save_samples(args.out, images, labels)
    print(f"wrote {paths['grid']} and {paths['samples']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small MAR on the bundled digits, sample 10 per class, write grid, npz and checkpoint."""
    import numpy as np

    from .evaluation.digits import evaluate
    from .imageio import save_samples
    from .sampling.engine import generate
    from .training.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(train_config_from(args))
    try:
        trainer.fit()
    finally:
        trainer.close()
    if not trainer.dist.is_main:
        return 0
    labels = np.repeat(np.arange(10), args.per_class)
    images = generate(trainer.ema_model(), trainer.tokenizer, labels, _settings(args))
    paths = save_samples(args.out_dir, images, labels, ncols=args.per_class)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"  samples:    {paths['grid']}  {paths['samples']}")
    print(f"  checkpoint: {Path(args.out_dir) / 'last.pth'} (EMA model: {Path(args.out_dir) / 'ema'})")
    if args.evaluate:
        print(f"  quality:    {evaluate(images, labels)}")
    return 0


def cmd_cache_latents(args: argparse.Namespace) -> int:
    """Encode an image folder into a sharded latent cache; torchrun splits the shards between ranks."""
    import torch

    from .config import VAE_LATENT_SCALE
    from .models.vae import AutoencoderKL
    from .training.data import ImageFolderDataset
    from .training.distributed import barrier, init_distributed, shutdown
    from .training.latent_cache import build_latent_cache, file_sha256

    if not Path(args.vae_ckpt).is_file():
        raise FileNotFoundError(f"VAE checkpoint {args.vae_ckpt} not found (the KL-16 kl16.ckpt of MAR)")
    vae_config = {"embed_dim": args.vae_embed_dim, **args.vae_config}
    device = torch.device(args.device)
    info = init_distributed(device.type, timeout_s=24 * 3600)  # ranks may wait long for the slowest one
    try:
        if device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        dataset = ImageFolderDataset(args.data, args.img_size, crop=True, flip=False)
        vae = AutoencoderKL(ckpt_path=args.vae_ckpt, **vae_config).eval().to(device)
        index = build_latent_cache(
            dataset,
            vae,
            args.out,
            vae_sha256=file_sha256(args.vae_ckpt),
            vae_config=vae_config,
            scale=VAE_LATENT_SCALE,
            shard_size=args.shard_size,
            dtype=args.dtype,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
            rank=info.rank,
            world_size=info.world_size,
            barrier=lambda: barrier(info),
            progress=args.progress and info.is_main,
        )
    finally:
        shutdown(info)
    if index is not None:
        print(
            f"wrote {args.out}: {index['num_items']} items in {len(index['shards'])} shards"
            + (f", {index['num_skipped']} unreadable images skipped" if index["num_skipped"] else "")
        )
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    """Open every image of a folder as training would; list the unreadable ones (exit status 1 if any)."""
    from .training.data import ImageFolderDataset, check_image_folder

    dataset = ImageFolderDataset(args.data, args.img_size, crop=args.crop, flip=False)
    bad = check_image_folder(dataset, args.num_workers, progress=args.progress)
    for it in bad:
        print(f"unreadable: {it.path} ({it.reason})")
    print(
        f"checked {len(dataset)} images in {dataset.num_classes} classes: "
        + (f"{len(bad)} unreadable" if bad else "all readable")
    )
    return 1 if bad else 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .export.onnx import export_from_checkpoint

    paths = export_from_checkpoint(
        args.checkpoint,
        args.out,
        fp16=args.fp16,
        opset=args.opset,
        config=args.config,
        vae=args.vae,
        tokenizer=args.tokenizer,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="marengine", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train a MAR (torchrun --nproc_per_node=N -m marengine train ... for DDP)")
    add_train_flags(p, TrainConfig())
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("demo", help="the main job: train on the bundled digits, sample, write images")
    add_train_flags(p, DEMO)
    add_sample_flags(p, DEMO_SAMPLING, seed_flag="--sample-seed")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the samples with an independent digits classifier",
    )
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("sample", help="sample images from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="training .pth, pretrained folder, or official .pth")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="class labels (default: one per class)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None, help="preset for official checkpoints (mar_base, mar_large, mar_huge)")
    p.add_argument("--vae-ckpt", default=None)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")
    add_sample_flags(p, {})
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser(
        "cache-latents",
        help="encode an image folder with the VAE once (original + flipped) into "
        "a sharded cache; rerun to finish a killed run; torchrun --nproc_per_node=N splits the shards",
    )
    p.add_argument("--data", required=True, help="image folder root/<class>/<images>")
    p.add_argument("--vae-ckpt", required=True)
    p.add_argument("--out", required=True, help="output folder (index.json + shard files)")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--vae-embed-dim", type=int, default=16)
    p.add_argument(
        "--vae-config",
        type=json.loads,
        default={},
        help="JSON keywords of AutoencoderKL for a non-official VAE, e.g. '{\"ch\": 32}'",
    )
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard file")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage type of the moments")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader processes decoding images")
    p.add_argument("--device", default="cpu", help="cpu or cuda (each torchrun rank takes its local GPU)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(fn=cmd_cache_latents)

    p = sub.add_parser("check-data", help="open every image of a folder; list unreadable ones (exit 1 if any)")
    p.add_argument("--data", required=True, help="image folder root/<class>/<images>")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument(
        "--crop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="center crop as training does; --no-crop also flags images not img-size square",
    )
    p.add_argument("--num-workers", type=int, default=0, help="processes decoding images")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(fn=cmd_check_data)

    p = sub.add_parser("export-onnx", help="export backbone, head step and decoder to ONNX")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--config", default=None, help="preset name or JSON config, required for a .pth checkpoint")
    p.add_argument("--vae", default=None, help="kl16.ckpt: export the VAE decoder")
    p.add_argument("--tokenizer", choices=("auto", "vae", "pixel", "none"), default="auto")
    p.set_defaults(fn=cmd_export_onnx)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    try:
        return args.fn(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"marengine {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
