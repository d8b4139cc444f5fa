"""--num-images / --per-class: a class-balanced set of images (sampling.balanced), for the
commands that generate many (sample, evaluate)."""

from __future__ import annotations

import argparse

from ..checks import check_int
from .common import add_checked


def add_balanced_options(p: argparse.ArgumentParser, num_images: str, per_class: str) -> None:
    """--num-images N / --per-class K: a class-balanced set of images (sampling.balanced); the
    texts say what each means to the command."""
    add_checked(p, "--num-images", check_int, None, num_images, lo=1)
    add_checked(p, "--per-class", check_int, None, per_class, lo=1)


def check_balanced_options(args: argparse.Namespace) -> bool:
    """Whether a class-balanced count was given; both at once is refused."""
    if args.num_images is not None and args.per_class is not None:
        raise ValueError("give --num-images N or --per-class K, not both")
    return args.num_images is not None or args.per_class is not None
