"""`marengine edit`: inpaint, outpaint or complete image files with a model (any checkpoint kind)."""

from __future__ import annotations

import argparse

from ..editing import add_edit_options
from ..options import add_sampling_options
from .common import add_backend_options, add_model_options, add_overwrite_option, add_threads_option, sample_settings


def cmd_edit(args: argparse.Namespace) -> int:
    import numpy as np

    from ..editing import edit_inputs
    from ..files import claim_output_folder
    from ..imageio import SAMPLES_KIND, save_samples
    from ..pipeline import MARPipeline

    settings = sample_settings(args)  # every setting checked before the model is read
    if args.images is None:
        raise ValueError("give the images to edit with --images (and --mask, --box, --padding or --region)")
    claim_output_folder(args.out, SAMPLES_KIND, overwrite=args.overwrite)  # before any work
    pipe = MARPipeline.from_pretrained(
        args.checkpoint,
        device=args.device,
        config=args.model,
        vae_ckpt=args.vae_ckpt,
        use_ema=not args.no_ema,
        settings=settings,
    )
    images, mask = edit_inputs(args, pipe.image_channels, pipe.image_size)
    if len(args.labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(args.labels)} --labels: give one label per image")
    out = pipe.inpaint(images, mask, args.labels)
    shown = images.copy()
    shown[mask] = 127  # what the model was given: the region to generate greyed out
    masks = np.ascontiguousarray(np.broadcast_to(mask, images.shape[:3]))  # [N, H, W] True = generated
    paths = save_samples(
        args.out,
        out.array,
        np.asarray(args.labels),
        ncols=len(images),
        grid_images=np.concatenate([shown, out.array]),
        extra={"inputs": images, "masks": masks},
        replace=args.overwrite,
    )
    print(
        f"wrote {paths['grid']} (top: the inputs, generated region grey; bottom: the results) and "
        f"{paths['samples']} (images: the results; inputs; masks: True where generated; labels)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit", help="inpaint / outpaint image files (known pixels are kept exactly)")
    add_model_options(p)
    p.add_argument("--labels", type=int, nargs="+", required=True, help="the class to complete each image as")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: grid.png (inputs above results) and samples.npz "
        "(images: the results, inputs: the given images, masks: True where generated, labels)",
    )
    add_edit_options(p)
    add_sampling_options(p)
    add_backend_options(p)
    add_overwrite_option(p)
    add_threads_option(p)
    p.set_defaults(fn=cmd_edit)
