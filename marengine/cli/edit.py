"""`marengine edit`: inpaint, outpaint or complete image files with a model (any checkpoint kind)."""

from __future__ import annotations

import argparse

from ..editing import add_edit_options
from .common import add_generator_command, load_pipeline, sample_settings


def cmd_edit(args: argparse.Namespace) -> int:
    import numpy as np

    from ..editing import edit_inputs
    from ..files import claim_output_folder
    from ..imageio import SAMPLES_KIND, save_samples

    settings = sample_settings(args)  # every setting checked before the model is read
    if args.images is None:
        raise ValueError("give the images to edit with --images (and --mask, --box, --padding or --region)")
    claim_output_folder(args.out, SAMPLES_KIND, overwrite=args.overwrite)  # before any work
    pipe = load_pipeline(args, settings)
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
    out = (
        "output folder: grid.png (inputs above results) and samples.npz "
        "(images: the results, inputs: the given images, masks: True where generated, labels)"
    )
    help = "inpaint / outpaint image files (known pixels are kept exactly)"
    p = add_generator_command(sub, "edit", help, cmd_edit, out)
    p.add_argument("--labels", type=int, nargs="+", required=True, help="the class to complete each image as")
    add_edit_options(p)
