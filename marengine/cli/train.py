"""`marengine train` and `marengine demo` (the main job: train on the bundled digits, sample,
write images)."""

from __future__ import annotations

import argparse
import time

from ..checks import arg, check_float, check_int
from ..config import SAMPLE_DEFAULTS
from ..options import add_sampling_options
from ..training.config import DEMO, TrainConfig
from .common import add_backend_options, add_dataclass_flags, add_threads_option, dataclass_from, sample_settings

DEMO_SAMPLING = {"num_iter": 16, "cfg": 2.0, "temperature": 1.0}


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer

    cfg = dataclass_from(TrainConfig, args)
    make_hook = online_eval_hook(args, cfg)  # every evaluation option checked before training starts
    trainer = Trainer(cfg)
    try:
        if make_hook is not None:
            trainer.eval_hook = make_hook(trainer.device)
        out = trainer.fit()
    finally:
        trainer.close()
    if out["ema"] is not None:  # the main process
        print(
            f"trained {out['step']} steps ({out['skipped']} skipped); checkpoint {out['checkpoint']}, "
            f"EMA model {out['ema']}"
        )
    return 0


def online_eval_hook(args: argparse.Namespace, cfg: TrainConfig):
    """None without --eval-every; else a function device -> EvalHook (evaluation.online builds the callback)."""
    if not args.eval_every:
        return None
    from ..evaluation.online import online_eval
    from ..models.family import member_config
    from ..sampling.balanced import balanced_labels
    from ..sampling.engine import SampleSettings
    from ..training.trainer import EvalHook

    _, model_cfg = member_config(cfg.model, cfg.loss, **cfg.model_overrides)
    balanced_labels(model_cfg.class_num, args.eval_images)  # a count that does not divide is refused now
    digits = model_cfg.class_num == 10 and getattr(model_cfg, "img_size", None) in (8, 16)
    if args.eval_inception_weights is None and not digits:
        raise ValueError(
            "--eval-every on this model needs --eval-inception-weights FILE (and --eval-ref-stats for FID)"
        )
    sides = [getattr(model_cfg, a, None) for a in ("img_size", "vae_stride", "patch_size")]
    seq_len = (sides[0] // sides[1] // sides[2]) ** 2 if all(sides) else args.eval_num_iter
    settings = SampleSettings(num_iter=min(args.eval_num_iter, seq_len), cfg=args.eval_cfg, seed=0)

    def make(device):
        fn, columns = online_eval(
            args.eval_images, settings, model_cfg.class_num, args.eval_inception_weights, args.eval_ref_stats, device
        )
        return EvalHook(fn, args.eval_every, columns)

    return make


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval-every",
        type=arg(check_int, "--eval-every", lo=1),
        default=None,
        help="score the EMA weights every N steps and at the end, into metrics.csv (default: never)",
    )
    p.add_argument(
        "--eval-images",
        type=arg(check_int, "--eval-images", lo=1),
        default=1000,
        help="class-balanced images per evaluation, a multiple of the classes (default 1000)",
    )
    p.add_argument(
        "--eval-inception-weights",
        default=None,
        help="Inception weights file for FID/IS (default: none; digits models use the digits judge)",
    )
    p.add_argument(
        "--eval-ref-stats", default=None, help="reference statistics npz (mu, sigma) for FID (default: none)"
    )
    p.add_argument(
        "--eval-num-iter",
        type=arg(check_int, "--eval-num-iter", lo=1),
        default=SAMPLE_DEFAULTS.num_iter,
        help=f"sampling iterations of the evaluation (default {SAMPLE_DEFAULTS.num_iter}, at most the tokens)",
    )
    p.add_argument(
        "--eval-cfg",
        type=arg(check_float, "--eval-cfg", lo=1.0),
        default=SAMPLE_DEFAULTS.cfg,
        help=f"guidance scale of the evaluation (default {SAMPLE_DEFAULTS.cfg})",
    )


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
    add_eval_flags(p)
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
