"""`marengine train` and `marengine demo` (the main job: train on the bundled digits, sample,
write images)."""

from __future__ import annotations

import argparse
import time

from ..checks import arg, check_int
from ..options import add_sampling_options
from ..training.config import DEMO, TrainConfig
from .common import add_backend_options, add_dataclass_flags, add_threads_option, dataclass_from, sample_settings

DEMO_SAMPLING = {"num_iter": 16, "cfg": 2.0, "temperature": 1.0}


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.trainer import train

    out = train(dataclass_from(TrainConfig, args))
    if out["ema"] is not None:  # the main process
        print(
            f"trained {out['step']} steps ({out['skipped']} skipped); checkpoint {out['checkpoint']}, "
            f"EMA model {out['ema']}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small MAR on the bundled digits, sample per class, write grid, npz, one PNG per
    sample and the checkpoint."""
    import numpy as np

    from ..evaluation.digits import evaluate
    from ..imageio import save_samples
    from ..sampling.engine import generate
    from ..training.trainer import RUN_KIND, Trainer

    t0 = time.perf_counter()
    cfg, settings = dataclass_from(TrainConfig, args), sample_settings(args)  # every setting checked up front
    trainer = Trainer(cfg)
    try:
        out = trainer.fit()
    finally:
        trainer.close()
    if not trainer.dist.is_main:
        return 0
    labels = np.repeat(np.arange(10), args.per_class)
    images = generate(trainer.ema_model(), trainer.tokenizer, labels, settings)
    paths = save_samples(
        args.out_dir, images, labels, ncols=args.per_class, per_image=True, kind=RUN_KIND
    )  # in the run
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"  samples:    {paths['grid']}  {paths['samples']}")
    print(f"  images:     {paths['pngs']}/class{{c}}_{{i}}.png (one PNG per sample, e.g. for marengine edit --images)")
    print(f"  checkpoint: {out['checkpoint']} (EMA model: {out['ema']})")
    if args.evaluate:
        print(f"  quality:    {evaluate(images, labels)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a MAR (torchrun --nproc_per_node=N -m marengine train ... for DDP)")
    add_dataclass_flags(p, TrainConfig, TrainConfig())
    add_threads_option(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("demo", help="the main job: train on the bundled digits, sample, write images")
    add_dataclass_flags(p, TrainConfig, DEMO)
    add_sampling_options(p, DEMO_SAMPLING, seed_flag="--sample-seed")
    add_backend_options(p)
    p.add_argument("--per-class", type=arg(check_int, "--per-class", lo=1), default=10, help="samples per digit")
    p.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the samples with an independent digits classifier",
    )
    add_threads_option(p)
    p.set_defaults(fn=cmd_demo)
