"""`marengine cache-latents` (a sharded VAE latent cache) and `marengine check-data`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checks import check_int
from .common import add_checked, add_command, add_output_options, add_switch, add_threads_option, json_object


def cmd_cache_latents(args: argparse.Namespace) -> int:
    """Encode an image folder into a sharded latent cache; torchrun splits the shards between ranks."""
    from ..config import VAE_LATENT_SCALE
    from ..files import check_output_folder
    from ..models.vae import AutoencoderKL
    from ..training.data import ImageFolderDataset
    from ..training.distributed import barrier, init_distributed, shutdown
    from ..training.latent_cache import build_latent_cache, file_sha256
    from ..utils import resolve_device

    if not Path(args.vae_ckpt).is_file():
        raise FileNotFoundError(f"VAE checkpoint {args.vae_ckpt} not found (the KL-16 kl16.ckpt of MAR)")
    check_output_folder(args.out)
    vae_config = {"embed_dim": args.vae_embed_dim, **args.vae_config}
    device = resolve_device(args.device)
    info = init_distributed(device.type, timeout_s=24 * 3600)  # ranks may wait long for the slowest one
    try:
        if device.type == "cuda":
            import torch

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
        skipped = f", {index['num_skipped']} unreadable images skipped" if index["num_skipped"] else ""
        print(f"wrote {args.out}: {index['num_items']} items in {len(index['shards'])} shards{skipped}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    """Open every image of a folder as training would; list the unreadable ones (exit status 1 if any)."""
    from ..training.data import ImageFolderDataset, check_image_folder

    dataset = ImageFolderDataset(args.data, args.img_size, crop=args.crop, flip=False)
    bad = check_image_folder(dataset, args.num_workers, progress=args.progress)
    for it in bad:
        print(f"unreadable: {it.path} ({it.reason})")
    found = f"{len(bad)} unreadable" if bad else "all readable"
    print(f"checked {len(dataset)} images in {dataset.num_classes} classes: {found}")
    return 1 if bad else 0


def add_folder_options(p: argparse.ArgumentParser) -> None:
    """The image folder and how its images are read (cache-latents and check-data)."""
    p.add_argument("--data", required=True, help="image folder root/<class>/<images>")
    side = "image side the images are read at (the official center crop, or --no-crop: as they are)"
    add_checked(p, "--img-size", check_int, 256, side, lo=1)
    add_checked(p, "--num-workers", check_int, 0, "DataLoader processes decoding images (0: this one)", lo=0)
    add_switch(p, "--progress", True, "show a progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "cache-latents",
        "encode an image folder with the VAE once (original + flipped) into "
        "a sharded cache; rerun to finish a killed run; torchrun --nproc_per_node=N splits the shards",
        cmd_cache_latents,
    )
    add_folder_options(p)
    p.add_argument("--vae-ckpt", required=True, help="the KL-16 VAE file (kl16.ckpt of MAR)")
    add_output_options(p, "output folder (index.json + shard files)", overwrite=False)
    add_checked(p, "--vae-embed-dim", check_int, 16, "latent channels of the VAE", lo=1)
    p.add_argument(
        "--vae-config", type=json_object, default={}, help="JSON keywords of AutoencoderKL for a non-official VAE"
    )
    add_checked(p, "--shard-size", check_int, 1024, "images per shard file", lo=1)
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage type of the moments")
    add_checked(p, "--batch-size", check_int, 32, "images per VAE forward", lo=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (each torchrun rank takes its local GPU)")

    check = "open every image of a folder; list unreadable ones (exit 1 if any)"
    p = add_command(sub, "check-data", check, cmd_check_data)
    add_folder_options(p)
    crop = "center crop as training does; --no-crop also flags images not img-size square"
    add_switch(p, "--crop", True, crop)
    add_threads_option(p)
