"""`marengine sample`: images from any checkpoint (training .pth, pretrained folder, official .pth)."""

from __future__ import annotations

import argparse

from ..options import add_sampling_options
from .common import add_backend_options, add_model_options, add_overwrite_option, add_threads_option, sample_settings


def cmd_sample(args: argparse.Namespace) -> int:
    from ..checks import check_labels
    from ..files import claim_output_folder
    from ..imageio import SAMPLES_KIND, save_samples
    from ..models.loading import load_model
    from ..models.tokenizers import build_tokenizer
    from ..sampling.engine import generate
    from ..utils import resolve_device

    settings = sample_settings(args)  # every setting checked before the model is read
    claim_output_folder(args.out, SAMPLES_KIND, overwrite=args.overwrite)  # before any work
    device = resolve_device(args.device)
    loaded = load_model(
        args.checkpoint, config=args.model, use_ema=not args.no_ema, vae_ckpt=args.vae_ckpt, device=device
    )
    if loaded.tokenizer_spec is None:
        raise ValueError(f"{args.checkpoint}: no tokenizer fits this model's latents; images cannot be decoded")
    model, tokenizer = loaded.model, build_tokenizer(loaded.tokenizer_spec).to(device)
    labels = check_labels(args.labels, model.num_classes, "--labels") if args.labels else list(range(model.num_classes))
    images = generate(model, tokenizer, labels, settings, progress=True)
    paths = save_samples(args.out, images, labels, replace=args.overwrite)
    print(f"wrote {paths['grid']} and {paths['samples']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample images from a checkpoint")
    add_model_options(p)
    p.add_argument("--labels", type=int, nargs="*", default=None, help="class labels (default: one per class)")
    p.add_argument("--out", required=True, help="output folder: grid.png and samples.npz")
    add_sampling_options(p)
    add_backend_options(p)
    add_overwrite_option(p)
    add_threads_option(p)
    p.set_defaults(fn=cmd_sample)
