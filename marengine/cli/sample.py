"""`marengine sample`: images from any checkpoint (training .pth, pretrained folder, official .pth)."""

from __future__ import annotations

import argparse

from .balanced import add_balanced_options, check_balanced_options
from .common import add_generator_command, load_pipeline, sample_settings


def cmd_sample(args: argparse.Namespace) -> int:
    from ..checks import check_labels
    from ..files import claim_output_folder
    from ..imageio import SAMPLES_KIND, save_samples
    from ..sampling.balanced import balanced_labels

    settings = sample_settings(args)  # every setting checked before the model is read
    balanced = check_balanced_options(args)
    if args.labels and balanced:
        raise ValueError("give --labels, or --num-images / --per-class (class-balanced), not both")
    claim_output_folder(args.out, SAMPLES_KIND, overwrite=args.overwrite)  # before any work
    pipe = load_pipeline(args, settings)
    classes = pipe.model.num_classes
    if balanced:  # class-balanced, index-seeded (as evaluate)
        out = pipe.indexed(balanced_labels(classes, args.num_images, args.per_class))
    else:
        out = pipe(check_labels(args.labels, classes, "--labels") if args.labels else list(range(classes)))
    paths = save_samples(args.out, out.array, out.labels, replace=args.overwrite)
    print(f"wrote {paths['grid']} and {paths['samples']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    out = "output folder: grid.png and samples.npz"
    p = add_generator_command(sub, "sample", "sample images from a checkpoint", cmd_sample, out)
    p.add_argument("--labels", type=int, nargs="*", default=None, help="class labels (default: one per class)")
    add_balanced_options(
        p,
        num_images="class-balanced: N images, a multiple of the classes (refused otherwise), each image's "
        "noise fixed by its index as in marengine evaluate (default: --labels)",
        per_class="class-balanced: K images of every class (default: --labels)",
    )
